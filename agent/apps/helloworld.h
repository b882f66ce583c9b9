// The helloworld stand-in (istio/examples-helloworld-v1/-v2): GET /hello answers
// "Hello version: <SERVICE_VERSION>, instance: <HOSTNAME>\n", GET /health is a probe.
#pragma once

#include <optional>
#include <string>

#include "handler.h"

namespace sluice::apps {

// The Python sample prints "None" for an unset variable; so does the stand-in.
struct HelloworldOptions {
  std::optional<std::string> version;   // from SERVICE_VERSION
  std::optional<std::string> instance;  // from HOSTNAME
};

std::string HelloBody(const HelloworldOptions& options);

Handler MakeHelloworldHandler(HelloworldOptions options);

}  // namespace sluice::apps
