// A proxyless gRPC client in Node.js (@grpc/grpc-js-xds, an xDS implementation independent of
// gRPC C-core), speaking the same line protocol as `grpc_xds.py client`:
//
//     node grpc_xds_client.js TARGET      (GRPC_XDS_BOOTSTRAP names the bootstrap)
//
// reads one JSON command per line, {"calls": N, "method": "/test.Echo/Echo",
// "metadata": [["key", "value"]]}, and answers each with one line
// {"replies": {"v1": n, ...}, "errors": {"UNAVAILABLE": n}}.

const grpc = require('@grpc/grpc-js');
require('@grpc/grpc-js-xds').register();
const readline = require('readline');

const client = new grpc.Client('xds:///' + process.argv[2], grpc.credentials.createInsecure());
const identity = (x) => x;

function call(method, metadata, timeoutSeconds) {
  return new Promise((resolve) => {
    const md = new grpc.Metadata();
    for (const [key, value] of metadata) md.add(key, value);
    const deadline = new Date(Date.now() + timeoutSeconds * 1000);
    client.makeUnaryRequest(method, identity, identity, Buffer.from('hi'), md, { deadline }, (error, reply) => {
      if (error) resolve({ error: grpc.status[error.code] || String(error.code), details: error.details });
      else resolve({ reply: reply.toString() });
    });
  });
}

async function main() {
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    const command = JSON.parse(line);
    const replies = {};
    const errors = {};
    for (let i = 0; i < command.calls; i++) {
      const outcome = await call(command.method || '/test.Echo/Echo', command.metadata || [], command.timeout || 10);
      if (outcome.error) {
        errors[outcome.error] = (errors[outcome.error] || 0) + 1;
        if (command.details && !errors._details) errors._details = outcome.details;
      } else {
        replies[outcome.reply] = (replies[outcome.reply] || 0) + 1;
      }
    }
    process.stdout.write(JSON.stringify({ replies, errors }) + '\n');
  }
  client.close();
}

main();
