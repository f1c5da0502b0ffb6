// node --import ./build/driver/hooks.js: resolves imports as Next.js's bundler does, for the
// guide's files compiled into build/.
import { register } from "node:module";

register("./resolve.js", import.meta.url);
