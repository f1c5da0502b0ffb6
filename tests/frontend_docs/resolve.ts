// `@/x` is build/x.js, extensionless relative imports of the guide's files get `.js`, and
// `@/lib/auth` (Better Auth's server instance, which needs the app's database) is the stand-in
// of auth-stub.ts.
type Context = { parentURL?: string };
type Next = (specifier: string, context: Context) => Promise<unknown>;

const build = new URL("../", import.meta.url);

export async function resolve(specifier: string, context: Context, next: Next): Promise<unknown> {
  if (specifier === "@/lib/auth") return next(new URL("driver/auth-stub.js", build).href, context);
  if (specifier.startsWith("@/")) return next(new URL(`${specifier.slice(2)}.js`, build).href, context);
  const ours = context.parentURL?.startsWith(build.href) ?? false;
  if (ours && specifier.startsWith(".") && !specifier.endsWith(".js")) {
    return next(`${specifier}.js`, context);
  }
  return next(specifier, context);
}
