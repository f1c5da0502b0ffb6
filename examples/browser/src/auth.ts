// Sign-in with Better Auth's client, and the JWT its jwt plugin serves: what the Tasks API
// verifies. Better Auth runs on an origin of its own here (in a Next.js app it is the app's), so
// its client sends the session cookie with `credentials: "include"` — its default — and Better
// Auth must answer this page's origin with CORS (interop/better-auth's TRUSTED_ORIGINS).
import { createAuthClient } from "better-auth/client";
import { jwtClient } from "better-auth/client/plugins";
import type { TokenGetter } from "tasks-api-client";

export function makeAuthClient(baseURL: string) {
  return createAuthClient({ baseURL, plugins: [jwtClient()] });
}

export type AuthClient = ReturnType<typeof makeAuthClient>;

/** The jwt plugin's token (`/api/auth/token`), kept until 30 s before its `exp`; a new one when
 * the API asks for it (after a 401) or when it is about to expire. */
export function apiToken(auth: AuthClient): TokenGetter {
  let cached: { token: string; exp: number } | null = null;
  return async ({ refresh }) => {
    if (!refresh && cached && cached.exp - Date.now() / 1000 > 30) return cached.token;
    const { data } = await auth.token();
    cached = data?.token ? { token: data.token, exp: expiry(data.token) } : null;
    return cached?.token ?? null;
  };
}

function expiry(jwt: string): number {
  const payload = jwt.split(".")[1] ?? "";
  return (JSON.parse(atob(payload.replace(/-/g, "+").replace(/_/g, "/"))) as { exp: number }).exp;
}
