// Use a launched server through @jupyterlab/services, as JupyterLab and thebe do: start
// a kernel, run a cell over the kernel's websocket, list the files and save one.
// Prints one JSON object with what it saw.
//
//   node services.mjs SERVER_URL TOKEN
//
// SERVER_URL and TOKEN are the `url` and `token` of a BinderHub ready event.
import services from "@jupyterlab/services";

const { ContentsManager, KernelManager, ServerConnection } = services;

const [url, token] = process.argv.slice(2);
const serverSettings = ServerConnection.makeSettings({
  baseUrl: url,
  wsUrl: url.replace(/^http/, "ws"),
  token,
  appendToken: true,
});
const timeout = setTimeout(() => {
  console.log(JSON.stringify({ error: "no answer in 120 s" }));
  process.exit(2);
}, 120_000);

const kernels = new KernelManager({ serverSettings });
const kernel = await kernels.startNew({ name: "python3" });
let stdout = "";
const future = kernel.requestExecute({ code: "print(6*7)" });
future.onIOPub = (msg) => {
  if (msg.header.msg_type === "stream") {
    stdout += msg.content.text;
  }
};
const reply = await future.done;

const contents = new ContentsManager({ serverSettings });
const saved = await contents.save("from-services.txt", {
  type: "file",
  format: "text",
  content: "saved through @jupyterlab/services\n",
});
const listing = await contents.get("", { content: true });
const read = await contents.get("from-services.txt", { content: true });

await kernel.shutdown();
kernels.dispose();
clearTimeout(timeout);
console.log(
  JSON.stringify({
    status: reply.content.status,
    stdout,
    saved: saved.path,
    listed: listing.content.map((item) => item.name).sort(),
    read: read.content,
  }),
);
