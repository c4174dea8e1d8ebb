"""Project helpers (run lookup, callbacks, ...)."""
