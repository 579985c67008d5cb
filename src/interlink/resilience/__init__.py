"""Pure resilience policies and the thin sync/async drivers that run them."""
