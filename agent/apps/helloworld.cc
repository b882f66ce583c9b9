#include "helloworld.h"

namespace sluice::apps {

std::string HelloBody(const HelloworldOptions& options) {
  return "Hello version: " + options.version.value_or("None") +
         ", instance: " + options.instance.value_or("None") + "\n";
}

Handler MakeHelloworldHandler(HelloworldOptions options) {
  std::string hello = HelloBody(options);
  return [hello](const Request& req, const ConnectionInfo&) {
    Response r;
    r.headers.emplace_back("Content-Type", "text/html; charset=utf-8");
    bool get = req.method == "GET" || req.method == "HEAD";
    if (req.path == "/hello" || req.path == "/health") {
      if (!get) {
        r.status = 405;
        r.headers.emplace_back("Allow", "GET, HEAD");
        r.body = "Method Not Allowed\n";
      } else {
        r.body = req.path == "/hello" ? hello : "Helloworld is healthy";
      }
      return r;
    }
    r.status = 404;
    r.body = "Not Found\n";
    return r;
  };
}

}  // namespace sluice::apps
