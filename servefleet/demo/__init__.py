"""A stand-in inference server for the local demo and the tests.

Real model servers need GPUs and minutes to load; this package speaks the same small
OpenAI-compatible HTTP surface (health, models, completions, chat completions, with
streaming) on a laptop, and makes the behaviours a control plane must cope with —
slow loads, replicas turning unready, several versions side by side — reproducible
on demand. Run it with `python -m servefleet.demo --help`.
"""
