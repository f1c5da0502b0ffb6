// Minimal, real Better Auth server used by the Python interop tests.
//
// Everything lives in memory (Better Auth's memory adapter), nothing native is
// loaded, and the server only binds to 127.0.0.1. See README.md for the env
// vars and routes.
import http from "node:http";
import { betterAuth } from "better-auth";
import { memoryAdapter } from "better-auth/adapters/memory";
import { fromNodeHeaders, toNodeHandler } from "better-auth/node";
import { bearer } from "better-auth/plugins/bearer";
import { createJwk, jwt } from "better-auth/plugins/jwt";
import { SignJWT } from "jose";

const HOST = "127.0.0.1";

function fail(message) {
  process.stderr.write(`better-auth interop server: ${message}\n`);
  process.exit(2);
}

// ---------------------------------------------------------------------------
// Configuration from the environment
// ---------------------------------------------------------------------------
const env = process.env;

const port = Number.parseInt(env.PORT ?? "", 10);
if (!/^\d+$/.test(env.PORT ?? "") || port < 1 || port > 65535) {
  fail("PORT is required (an integer in 1..65535)");
}

const secret = env.BETTER_AUTH_SECRET ?? "";
if (secret.length < 32) {
  fail("BETTER_AUTH_SECRET is required and must be at least 32 characters");
}

const baseURL = env.BETTER_AUTH_URL || `http://${HOST}:${port}`;
let selfOrigin;
try {
  selfOrigin = new URL(baseURL).origin;
} catch {
  fail(`BETTER_AUTH_URL is not a valid URL: ${baseURL}`);
}

const KEY_PAIR_CONFIGS = {
  EdDSA: { alg: "EdDSA", crv: "Ed25519" },
  ES256: { alg: "ES256" },
  ES512: { alg: "ES512" },
  RS256: { alg: "RS256", modulusLength: 2048 },
  PS256: { alg: "PS256", modulusLength: 2048 },
};
const jwtAlg = env.JWT_ALG || "EdDSA";
if (!(jwtAlg in KEY_PAIR_CONFIGS)) {
  fail(`JWT_ALG must be one of ${Object.keys(KEY_PAIR_CONFIGS).join(", ")} (got ${jwtAlg})`);
}

// The jwt plugin treats a *number* as an absolute `exp`, so a bare number of
// seconds is turned into a time span ("3" -> "3s").
let jwtExpires = (env.JWT_EXPIRES || "15m").trim();
if (/^\d+$/.test(jwtExpires)) jwtExpires = `${jwtExpires}s`;

function optionalSeconds(name) {
  const raw = env[name];
  if (raw === undefined || raw === "") return undefined;
  if (!/^\d+$/.test(raw)) fail(`${name} must be a whole number of seconds (got ${raw})`);
  return Number.parseInt(raw, 10);
}
// Pages on other origins that use this server from a browser (examples/browser): Better Auth
// trusts them (its CSRF check of cookie-carrying POSTs) and they get CORS answers with
// credentials, as a Better Auth behind a framework's CORS middleware would give them.
const pageOrigins = new Set();
for (const item of (env.TRUSTED_ORIGINS ?? "").split(",")) {
  const value = item.trim();
  if (!value) continue;
  let parsed;
  try {
    parsed = new URL(value);
  } catch {
    fail(`TRUSTED_ORIGINS holds something that is not an origin: ${value}`);
  }
  if (parsed.origin !== value.replace(/\/$/, "")) fail(`TRUSTED_ORIGINS: ${value} is not an origin`);
  pageOrigins.add(parsed.origin);
}

const rotationInterval = optionalSeconds("ROTATION_INTERVAL");
const gracePeriod = optionalSeconds("GRACE_PERIOD");

// ---------------------------------------------------------------------------
// Better Auth
// ---------------------------------------------------------------------------
const db = { user: [], session: [], account: [], verification: [], jwks: [] };

const jwtOptions = {
  jwks: {
    keyPairConfig: KEY_PAIR_CONFIGS[jwtAlg],
    ...(rotationInterval !== undefined ? { rotationInterval } : {}),
    ...(gracePeriod !== undefined ? { gracePeriod } : {}),
  },
  jwt: { expirationTime: jwtExpires },
};

const auth = betterAuth({
  baseURL,
  secret,
  database: memoryAdapter(db),
  emailAndPassword: { enabled: true, requireEmailVerification: false },
  // The server's own origin (and its localhost/127.0.0.1 aliases) are trusted,
  // so clients may send `Origin: <BETTER_AUTH_URL origin>` on cookie requests.
  trustedOrigins: [
    ...new Set([selfOrigin, `http://${HOST}:${port}`, `http://localhost:${port}`, ...pageOrigins]),
  ],
  // Tests sign up many users quickly; never throttle them.
  rateLimit: { enabled: false },
  telemetry: { enabled: false },
  // Keep stdout for the READY line only.
  logger: {
    level: "warn",
    log: (level, message, ...args) => {
      const extra = args.length ? ` ${args.map((a) => (typeof a === "string" ? a : JSON.stringify(a))).join(" ")}` : "";
      process.stderr.write(`[better-auth ${level}] ${message}${extra}\n`);
    },
  },
  plugins: [jwt(jwtOptions), bearer()],
});

const authContext = await auth.$context;

// Mint the first signing key up front (the plugin would otherwise create it
// lazily on the first /token or /jwks call) so the JWKS is deterministic.
if ((await authContext.adapter.findMany({ model: "jwks" })).length === 0) {
  await createJwk({ context: authContext }, jwtOptions);
}

/**
 * Force a key rotation, the same way the plugin's own `rotationInterval`
 * rotation behaves: the currently live key(s) get `expiresAt = now` (so they
 * are no longer picked for signing, but stay in the JWKS for `gracePeriod`
 * seconds after that), then a fresh key pair is created with the plugin's own
 * `createJwk` and becomes the newest live key, i.e. the signing key.
 */
async function rotateKeys() {
  const adapter = authContext.adapter;
  const now = new Date();
  const keys = await adapter.findMany({ model: "jwks" });
  const retired = [];
  for (const key of keys) {
    const expiresAt = key.expiresAt ? new Date(key.expiresAt) : undefined;
    if (!expiresAt || expiresAt > now) {
      await adapter.update({
        model: "jwks",
        where: [{ field: "id", value: key.id }],
        update: { expiresAt: now },
      });
      retired.push(key.id);
    }
  }
  const created = await createJwk({ context: authContext }, jwtOptions);
  return { kid: created.id, retired };
}

// ---------------------------------------------------------------------------
// HTTP server
// ---------------------------------------------------------------------------
const authHandler = toNodeHandler(auth);

function send(res, status, body, contentType = "application/json") {
  const payload = typeof body === "string" ? body : JSON.stringify(body);
  res.writeHead(status, {
    "content-type": contentType,
    "content-length": Buffer.byteLength(payload),
    "cache-control": "no-store",
  });
  res.end(payload);
}

async function health(req, res) {
  send(res, 200, "ok", "text/plain; charset=utf-8");
}

async function hs256Token(req, res) {
  // Works with the session cookie or `Authorization: Bearer <set-auth-token>`
  // (the bearer plugin turns the latter into the session cookie).
  const session = await auth.api.getSession({ headers: fromNodeHeaders(req.headers) });
  if (!session) return send(res, 401, { error: "no session" });
  const { user } = session;
  // The "hackathon" pattern: HS256 keyed with the raw secret, no iss/aud.
  const token = await new SignJWT({ sub: user.id, email: user.email, name: user.name })
    .setProtectedHeader({ alg: "HS256" })
    .setIssuedAt()
    .setExpirationTime("1h")
    .sign(new TextEncoder().encode(secret));
  send(res, 200, { token });
}

// auth.api.signJWT (server-only in Better Auth): the jwt plugin signs the JSON body's `payload`,
// as a Next.js route of the app would, e.g. a token for another audience (an MCP server).
async function signJwt(req, res) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const body = JSON.parse(Buffer.concat(chunks).toString() || "{}");
  const { token } = await auth.api.signJWT({ body: { payload: body.payload ?? {} } });
  send(res, 200, { token });
}

let rotationQueue = Promise.resolve();
async function rotate(req, res) {
  req.resume(); // any request body is ignored
  // Serialise concurrent rotations so each one retires exactly the previous key.
  const result = rotationQueue.then(rotateKeys);
  rotationQueue = result.catch(() => {});
  send(res, 200, await result);
}

// How many times the JWKS was requested: the tests count the fetches of the service under
// test from the outside.
let jwksRequests = 0;
async function jwksRequestCount(req, res) {
  send(res, 200, { count: jwksRequests });
}

const TEST_ROUTES = {
  "/test/health": { GET: health, HEAD: health },
  "/test/jwks-requests": { GET: jwksRequestCount },
  "/test/hs256-token": { GET: hs256Token },
  "/test/rotate": { POST: rotate },
  "/test/sign-jwt": { POST: signJwt },
};

async function handleTestRoute(req, res, pathname) {
  const methods = TEST_ROUTES[pathname];
  if (!methods) return send(res, 404, { error: "not found" });
  const handler = methods[req.method];
  if (!handler) {
    res.setHeader("allow", Object.keys(methods).join(", "));
    return send(res, 405, { error: "method not allowed" });
  }
  return handler(req, res);
}

// CORS for TRUSTED_ORIGINS: the page's fetches carry the session cookie (credentials), and may
// read the bearer plugin's and the jwt plugin's headers. Other origins get no CORS headers, so
// the browser refuses them.
function cors(req, res) {
  const origin = req.headers.origin;
  if (origin === undefined || !pageOrigins.has(origin)) return false;
  res.setHeader("access-control-allow-origin", origin);
  res.setHeader("access-control-allow-credentials", "true");
  res.setHeader("access-control-expose-headers", "set-auth-token, set-auth-jwt");
  res.setHeader("vary", "Origin");
  if (req.method !== "OPTIONS" || req.headers["access-control-request-method"] === undefined) {
    return false;
  }
  res.writeHead(204, {
    "access-control-allow-methods": "GET, POST",
    "access-control-allow-headers": req.headers["access-control-request-headers"] ?? "",
    "access-control-max-age": "600",
  });
  res.end();
  return true; // a preflight, answered
}

const server = http.createServer((req, res) => {
  if (cors(req, res)) return;
  const pathname = new URL(req.url ?? "/", "http://localhost").pathname;
  if (pathname === "/api/auth/jwks") jwksRequests += 1;
  if (pathname === "/test" || pathname.startsWith("/test/")) {
    handleTestRoute(req, res, pathname).catch((err) => {
      process.stderr.write(`test route error: ${err?.stack ?? err}\n`);
      if (!res.headersSent) send(res, 500, { error: String(err?.message ?? err) });
      else res.destroy();
    });
    return;
  }
  authHandler(req, res);
});

server.on("error", (err) => fail(`server error: ${err.message}`));

server.listen(port, HOST, () => {
  process.stdout.write(`READY ${port}\n`);
});

let stopping = false;
function shutdown() {
  if (stopping) return;
  stopping = true;
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
