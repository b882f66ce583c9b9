// The image map (agent/apps/images.json): which built-in stand-in runs in place of a
// sample's container image, and with which command line. The local cluster reads it.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/common/result.h"

namespace sluice::apps {

struct ImageEntry {
  std::string image;    // normalised: "kennethreitz/httpbin"
  std::string standin;  // "httpbin", "helloworld", "client"
  // Command template; nullopt: run the container's own command as written.
  std::optional<std::vector<std::string>> command;
  int default_port = 0;
  std::map<std::string, std::string> env;  // defaults, the pod's env wins
};

// "docker.io/istio/examples-helloworld-v1:1.0" -> "istio/examples-helloworld-v1".
std::string NormalizeImage(std::string_view image);

class ImageMap {
 public:
  // `origin` names the source in errors ("images.json").
  static Result<ImageMap> Parse(std::string_view json_text, std::string_view origin);
  static Result<ImageMap> Load(const std::string& path);

  // The entry for a container image, or null when no stand-in is known for it.
  const ImageEntry* Find(std::string_view image) const;
  const std::vector<ImageEntry>& entries() const { return entries_; }

 private:
  std::vector<ImageEntry> entries_;
};

// The entry's command with {sluice_apps} and {port} filled in (empty for command-less
// entries). `container_port` is the container's first containerPort, if it declares one.
// An argument that is exactly "{args}" is replaced by the container's args (the image's
// own arguments, as a Kubernetes container gives them: tcp-echo-server's ports and prefix).
std::vector<std::string> ExpandCommand(const ImageEntry& entry, std::string_view sluice_apps_bin,
                                       std::optional<int> container_port,
                                       const std::vector<std::string>& container_args = {});

}  // namespace sluice::apps
