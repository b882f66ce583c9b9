// A proxyless gRPC workload, as Istio's grpc-agent template runs one: gRPC's own xDS
// client (@grpc/grpc-js-xds) with a bootstrap whose node says GENERATOR: grpc, resolving
// an xds:/// target through whatever ADS server the test started. Two real gRPC servers
// stand in for the service's versions: v1 on 127.0.0.2:PORT and v2 on 127.0.0.3:PORT
// (the addresses the test's pods carry), each answering with its version.
//
// usage: node grpc_proxyless_client.js ADS_PORT PORT TARGET COUNT NODE_ID NAMESPACE
// Prints "rpc N: vX" per call and "v1 A v2 B" at the end; exits 0 when all COUNT calls
// succeeded, 1 with the error otherwise.
'use strict';
const [adsPort, port, target, count, nodeId, namespace] = process.argv.slice(2);
process.env.GRPC_XDS_BOOTSTRAP_CONFIG = JSON.stringify({
  xds_servers: [{
    server_uri: `127.0.0.1:${adsPort}`,
    channel_creds: [{type: 'insecure'}],
    server_features: ['xds_v3'],
  }],
  node: {
    id: nodeId,
    locality: {},
    metadata: {GENERATOR: 'grpc', NAMESPACE: namespace},
  },
});
const grpc = require('@grpc/grpc-js');
require('@grpc/grpc-js-xds').register();

const identity = (b) => b;
const method = {
  path: '/sluice.test.Echo/Version',
  requestStream: false,
  responseStream: false,
  requestSerialize: identity,
  requestDeserialize: identity,
  responseSerialize: identity,
  responseDeserialize: identity,
};

const fail = (msg) => {
  console.error(msg);
  process.exit(1);
};
setTimeout(() => fail('timed out'), 40000);

const servers = [];
const start = (address, version) => new Promise((resolve, reject) => {
  const s = new grpc.Server();
  s.addService({Version: method}, {Version: (call, cb) => cb(null, Buffer.from(version))});
  s.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err) => {
    if (err) reject(new Error(`${address}: ${err.message}`));
    servers.push(s);
    resolve();
  });
});

const call = (client) => new Promise((resolve, reject) => {
  client.makeUnaryRequest(method.path, identity, identity, Buffer.from('which'),
                          {deadline: Date.now() + 15000}, (e, reply) => {
    if (e) reject(new Error(`rpc: ${e.code} ${e.details}`));
    else resolve(reply.toString());
  });
});

(async () => {
  await start(`127.0.0.2:${port}`, 'v1');
  await start(`127.0.0.3:${port}`, 'v2');
  const client = new grpc.Client(`xds:///${target}`, grpc.credentials.createInsecure());
  const seen = {v1: 0, v2: 0};
  for (let i = 0; i < Number(count); i++) {
    const v = await call(client);
    seen[v] = (seen[v] || 0) + 1;
    console.log(`rpc ${i}: ${v}`);
  }
  console.log(`v1 ${seen.v1} v2 ${seen.v2}`);
  client.close();
  servers.forEach((s) => s.forceShutdown());
  process.exit(0);
})().catch((e) => fail(e.message));
