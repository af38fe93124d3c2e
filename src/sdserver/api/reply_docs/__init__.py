"""Reply shapes for /openapi.json: every route declares what it answers, without changing what it sends.

How to declare the reply of a new route:

1. Describe the success body as a TypedDict marked `@with_config(CLOSED)` (`envelopes.CLOSED`) in the module
   of its family here (`envelopes`/`jobs` for job replies, `uploads`, `models`, `admin`), or reuse one
   (`jobs.JOB_REPLIES` for any endpoint that queues a job and answers like `fetch`).
2. Build `Replies(ok=YourShape, codes=...)`: `codes` are the error codes (from `sdserver.errors`) the route may
   answer; the HTTP status of each comes from the one error table (`api.replies.error_codes_by_status`).
3. Served under aliases: `add_alias_routes(..., replies=YOUR_REPLIES)` (it will not register a route without one).
   A plain route: `router.add_api_route(path, handler, **YOUR_REPLIES.route_options())`.

The declared shapes are documentation only: the handler's dict is sent as it always was (`DocumentedAs`), and
tests/api/test_schemathesis.py checks the replies of the canonical operations against them.
"""
