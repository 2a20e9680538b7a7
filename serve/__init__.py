"""The HTTP endpoint: :mod:`serve.app` (the plain FastAPI app), :mod:`serve.deployment`
(Ray Serve), :mod:`serve.dashboard` (the page at ``/``)."""
