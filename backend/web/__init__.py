"""Everything between the server and a handler.

middleware.py    the ASGI middlewares (request id and access line, trailing slash,
                 unexpected errors, body size); cors.py the CORS one
errors.py        the exception handlers: every failure as the contract's body
matching.py      the one route matcher outside the router (Allow, the access line)
routing.py       TaskRoute: the request pipeline of every /api/{user_id}/ route
binding.py       its Binder: a request's values bound to a handler's arguments
auth.py          the pipeline's first step: the bearer token and the path's user
dependencies.py  what a handler may ask for: CurrentUser, Conn, SettingsDep
writes.py        If-Match, If-None-Match and Idempotency-Key, the HTTP side of safe edits
responses.py     JSON responses, a task with its ETag, a replayed answer
openapi.py       the document's shared parts and its finishing
state.py         AppState: what create_app builds, with one aclose()
lifespan.py      what runs around serving
"""
