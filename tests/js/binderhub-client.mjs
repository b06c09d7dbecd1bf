// Launch one repository through @jupyterhub/binderhub-client, the package mybinder.org's
// page and thebe use, as they use it: iterate over its events until ready or failed,
// then close.  Prints each event the client yields as one JSON line.
//
//   node binderhub-client.mjs BUILD_ENDPOINT PROVIDER_SPEC [--build-only]
//       [--build-token TOKEN] [--origin ORIGIN]
//
// BUILD_ENDPOINT is the service's /build/ URL; PROVIDER_SPEC is <provider>/<spec>.
// --origin sends the Origin header a browser would send from a page of ORIGIN.
import { BinderRepository } from "@jupyterhub/binderhub-client/client.js";

// The client is written for browsers: fetch-event-source reaches for `window` and
// `document` (visibility, cookies), which node does not have.
globalThis.window = globalThis;
globalThis.document = {
  cookie: "",
  hidden: false,
  addEventListener() {},
  removeEventListener() {},
};

// After a failed event the client ends fetch-event-source's promise with its own
// EventStreamClose, which nothing awaits: a browser logs it, node would exit on it.
process.on("unhandledRejection", (error) => {
  if (error?.constructor?.name !== "EventStreamClose") {
    throw error;
  }
});

const [endpoint, spec, ...flags] = process.argv.slice(2);
const option = (name) => (flags.includes(name) ? flags[flags.indexOf(name) + 1] : undefined);
const origin = option("--origin");
if (origin !== undefined) {
  const fetch = globalThis.fetch;
  globalThis.fetch = (url, init = {}) =>
    fetch(url, { ...init, headers: { ...init.headers, Origin: origin } });
}
const repo = new BinderRepository(spec, new URL(endpoint), {
  buildOnly: flags.includes("--build-only"),
  buildToken: option("--build-token"),
});
const timeout = setTimeout(() => {
  console.log(JSON.stringify({ phase: "timeout", message: "no ready or failed in 180 s\n" }));
  repo.close();
  process.exit(2);
}, 180_000);
for await (const event of repo.fetch()) {
  console.log(JSON.stringify(event));
  if (event.phase === "ready" || event.phase === "failed") {
    break;
  }
}
repo.close();
clearTimeout(timeout);
