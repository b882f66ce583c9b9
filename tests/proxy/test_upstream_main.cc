// sluice-test-upstream: the test upstream as a process (benchmarks).
//   sluice-test-upstream PORT [NAME] [DELAY_MS]
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "test_upstream.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s PORT [NAME] [DELAY_MS]\n", argv[0]);
    return 2;
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  sluice::testing::TestUpstream::Options o;
  o.port = static_cast<uint16_t>(std::atoi(argv[1]));
  if (argc > 2)
    o.name = argv[2];
  if (argc > 3)
    o.delay_ms = std::atoi(argv[3]);
  o.echo = false;
  o.record = false;
  try {
    sluice::testing::TestUpstream up(o);
    std::fprintf(stderr, "sluice-test-upstream %s on 127.0.0.1:%u\n", o.name.c_str(), up.port());
    int sig;
    sigwait(&set, &sig);
  } catch (const std::exception& e) {  // e.g. the port is taken
    std::fprintf(stderr, "sluice-test-upstream: %s\n", e.what());
    return 1;
  }
  return 0;
}
