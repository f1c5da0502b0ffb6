// HS256 tokens signed with the secret the live service was started with, as Better Auth's
// shared-secret set-up makes them.
import { createHmac } from "node:crypto";

const encode = (value: object) => Buffer.from(JSON.stringify(value)).toString("base64url");

export function hs256(secret: string, sub: string, lifetimeSeconds = 600): string {
  const now = Math.floor(Date.now() / 1000);
  const signed = `${encode({ alg: "HS256", typ: "JWT" })}.${encode({ sub, iat: now, exp: now + lifetimeSeconds })}`;
  return `${signed}.${createHmac("sha256", secret).update(signed).digest("base64url")}`;
}
