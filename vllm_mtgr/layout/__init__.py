"""The token layout every other part shares: how times, key limits and
ranking tickets ride in vLLM's position rows (`positions`), how key times
and limits ride in the attention's q/k slots (`slots`), and how a
semantic-ID model's tokens encode item codes (`code_trie`). Imports nothing
of the plugin but its errors: the kernels and the oracle may import it."""
