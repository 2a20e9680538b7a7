"""The HTTP endpoint. :mod:`serve.app` builds the FastAPI app (``create_app``) from one
router per resource in :mod:`serve.routes`; the routes reach the fleet through
:mod:`serve.ports` (the supervisor's methods as coroutines) and take their dependencies
from :mod:`serve.deps` and :mod:`serve.auth`. Plumbing: :mod:`serve.plumbing` (strict JSON,
body limit, error answers), :mod:`serve.sse`, :mod:`serve.openapi`; :mod:`serve.clients`
(what API clients may send and see), :mod:`serve.settings`, :mod:`serve.models` (bodies),
:mod:`serve.dashboard` (the page at ``/``), :mod:`serve.deployment` (Ray Serve)."""
