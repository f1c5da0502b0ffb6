// In place of lib/auth.ts at run time: the session, as auth.api.getSession finds it, and a JWT
// the jwt plugin signs (auth.api.signJWT, server-only), from the real Better Auth server.
export const auth = {
  api: {
    async signJWT({ body }: { body: { payload: Record<string, unknown> } }): Promise<{ token: string }> {
      const response = await fetch(`${process.env.NEXT_PUBLIC_APP_URL}/test/sign-jwt`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      return (await response.json()) as { token: string };
    },
    async getSession({ headers }: { headers: Headers }): Promise<{ user: { id: string } } | null> {
      const response = await fetch(`${process.env.NEXT_PUBLIC_APP_URL}/api/auth/get-session`, {
        headers: { cookie: headers.get("cookie") ?? "" },
      });
      return (await response.json()) as { user: { id: string } } | null;
    },
  },
};
