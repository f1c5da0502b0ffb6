"""Tasks for AI agents: the service's own MCP server (Streamable HTTP, stateless, JSON answers) at
`/mcp`, served by the same app as the REST routes.

- `server.py` builds the official SDK's MCPServer and the routes the app serves it on: the SDK's
  bearer check (through `tokens.McpTokens`, the service's own verifier, and its 401 with
  `WWW-Authenticate` and RFC 9728 protected-resource metadata), in front of it the service's
  limits (the client address's budget for refused requests, the user's rate limit), and its
  session manager, run by the app's lifespan.
- `tools.py` holds the five tools of the hackathon's Phase III (`add_task`, `list_tasks`,
  `complete_task`, `delete_task`, `update_task`), which call the same services as the REST
  routes: the same validation, quota, change feed and event streams. The user is the token's
  `sub`, never what the model sends.
- `tokens.py` decides which tokens the MCP server takes: those whose `aud` includes
  MCP_AUDIENCE, and the web app's own only with MCP_ACCEPT_APP_TOKENS.
"""
