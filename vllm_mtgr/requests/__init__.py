"""Requests as users send them, parsed and validated: a history's events
(`events`), a behaviour run (`behaviors`), the ranking and semantic-ID
requests (`ranking`, `semantic`) and the checks every history passes
(`validation`). Every refusal is a `RequestError` naming its field."""
