// A standard xDS client against Sluice's ADS server: gRPC's own xDS implementation
// (@grpc/grpc-js-xds, the package Sluice already pins for Envoy's protos) resolves
// xds:///echo.test through LDS -> RDS -> CDS -> EDS served by Sluice, then makes one real
// RPC to the endpoint EDS named.
//
// usage: node grpc_js_xds_client.js ADS_PORT BACKEND_PORT NODE_ID
// Prints "reply: pong" and exits 0 on success; exits 1 with the error otherwise.
'use strict';
const [adsPort, backendPort, nodeId] = process.argv.slice(2);
process.env.GRPC_XDS_BOOTSTRAP_CONFIG = JSON.stringify({
  xds_servers: [{
    server_uri: `127.0.0.1:${adsPort}`,
    channel_creds: [{type: 'insecure'}],
    server_features: ['xds_v3'],
  }],
  node: {id: nodeId, locality: {}, metadata: {NAMESPACE: 'default'}},
});
const grpc = require('@grpc/grpc-js');
require('@grpc/grpc-js-xds').register();

const identity = (b) => b;
const method = {
  path: '/sluice.test.Echo/Say',
  requestStream: false,
  responseStream: false,
  requestSerialize: identity,
  requestDeserialize: identity,
  responseSerialize: identity,
  responseDeserialize: identity,
};

const server = new grpc.Server();
server.addService({Say: method}, {Say: (call, cb) => cb(null, Buffer.from('pong'))});
const deadline = setTimeout(() => {
  console.error('timed out');
  process.exit(1);
}, 15000);
server.bindAsync(`127.0.0.1:${backendPort}`, grpc.ServerCredentials.createInsecure(), (err) => {
  if (err) {
    console.error(`backend: ${err.message}`);
    process.exit(1);
  }
  const client = new grpc.Client('xds:///echo.test', grpc.credentials.createInsecure());
  client.makeUnaryRequest(method.path, identity, identity, Buffer.from('ping'),
                          {deadline: Date.now() + 10000}, (e, reply) => {
    clearTimeout(deadline);
    if (e) {
      console.error(`rpc: ${e.code} ${e.details}`);
      process.exit(1);
    }
    console.log(`reply: ${reply.toString()}`);
    client.close();
    server.forceShutdown();
    process.exit(0);
  });
});
