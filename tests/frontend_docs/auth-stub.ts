// In place of lib/auth.ts at run time: the session, as auth.api.getSession finds it, from the
// real Better Auth server.
export const auth = {
  api: {
    async getSession({ headers }: { headers: Headers }): Promise<{ user: { id: string } } | null> {
      const response = await fetch(`${process.env.NEXT_PUBLIC_APP_URL}/api/auth/get-session`, {
        headers: { cookie: headers.get("cookie") ?? "" },
      });
      return (await response.json()) as { user: { id: string } } | null;
    },
  },
};
