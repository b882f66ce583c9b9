#include "images.h"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

namespace sluice::apps {

std::string NormalizeImage(std::string_view image) {
  if (std::size_t at = image.find('@'); at != std::string_view::npos)
    image = image.substr(0, at);
  // A tag is a ':' after the last '/' (a ':' before it belongs to a registry port).
  std::size_t slash = image.rfind('/');
  std::size_t colon = image.rfind(':');
  if (colon != std::string_view::npos && (slash == std::string_view::npos || colon > slash))
    image = image.substr(0, colon);
  for (std::string_view prefix : {"docker.io/", "index.docker.io/", "registry-1.docker.io/"})
    if (image.starts_with(prefix)) {
      image.remove_prefix(prefix.size());
      break;
    }
  if (image.starts_with("library/"))
    image.remove_prefix(8);
  return std::string(image);
}

Result<ImageMap> ImageMap::Parse(std::string_view json_text, std::string_view origin) {
  using nlohmann::json;
  std::string where(origin);
  json doc = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded())
    return Fail(where + ": not valid JSON");
  if (!doc.is_object() || !doc.contains("images") || !doc["images"].is_array())
    return Fail(where + ": 'images' must be an array");
  ImageMap map;
  for (std::size_t i = 0; i < doc["images"].size(); ++i) {
    const json& e = doc["images"][i];
    std::string at = where + ": images[" + std::to_string(i) + "]";
    if (!e.is_object())
      return Fail(at + ": must be an object");
    ImageEntry entry;
    if (!e.contains("image") || !e["image"].is_string() || e["image"].get<std::string>().empty())
      return Fail(at + ".image: must be a non-empty string");
    entry.image = NormalizeImage(e["image"].get<std::string>());
    at += " (" + entry.image + ")";
    if (e.contains("standin")) {
      if (!e["standin"].is_string())
        return Fail(at + ".standin: must be a string");
      entry.standin = e["standin"].get<std::string>();
    }
    if (!e.contains("command"))
      return Fail(at + ".command: missing (use null to run the container's own command)");
    if (!e["command"].is_null()) {
      if (!e["command"].is_array() || e["command"].empty())
        return Fail(at + ".command: must be a non-empty array of strings or null");
      std::vector<std::string> cmd;
      for (const json& a : e["command"]) {
        if (!a.is_string())
          return Fail(at + ".command: must be a non-empty array of strings or null");
        cmd.push_back(a.get<std::string>());
      }
      bool uses_port = false;
      for (const auto& a : cmd)
        uses_port = uses_port || a.find("{port}") != std::string::npos;
      if (uses_port && (!e.contains("default_port") || !e["default_port"].is_number_integer() ||
                        e["default_port"].get<int>() < 1 || e["default_port"].get<int>() > 65535))
        return Fail(at + ".default_port: a command with {port} needs a port in 1..65535");
      entry.command = std::move(cmd);
    }
    if (e.contains("default_port") && e["default_port"].is_number_integer())
      entry.default_port = e["default_port"].get<int>();
    if (e.contains("env")) {
      if (!e["env"].is_object())
        return Fail(at + ".env: must be an object of strings");
      for (const auto& [k, v] : e["env"].items()) {
        if (!v.is_string())
          return Fail(at + ".env." + k + ": must be a string");
        entry.env[k] = v.get<std::string>();
      }
    }
    for (const auto& prev : map.entries_)
      if (prev.image == entry.image)
        return Fail(at + ".image: listed twice");
    map.entries_.push_back(std::move(entry));
  }
  return map;
}

Result<ImageMap> ImageMap::Load(const std::string& path) {
  std::ifstream in(path);
  if (!in)
    return Fail(path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return Parse(ss.str(), path);
}

const ImageEntry* ImageMap::Find(std::string_view image) const {
  std::string want = NormalizeImage(image);
  for (const auto& e : entries_)
    if (e.image == want)
      return &e;
  return nullptr;
}

std::vector<std::string> ExpandCommand(const ImageEntry& entry, std::string_view sluice_apps_bin,
                                       std::optional<int> container_port,
                                       const std::vector<std::string>& container_args) {
  std::vector<std::string> out;
  if (!entry.command)
    return out;
  std::string port = std::to_string(container_port.value_or(entry.default_port));
  for (std::string arg : *entry.command) {
    if (arg == "{args}") {
      out.insert(out.end(), container_args.begin(), container_args.end());
      continue;
    }
    for (auto [key, value] :
         {std::pair<std::string_view, std::string_view>{"{sluice_apps}", sluice_apps_bin},
          {"{port}", port}}) {
      for (std::size_t pos = arg.find(key); pos != std::string::npos;
           pos = arg.find(key, pos + value.size()))
        arg.replace(pos, key.size(), value);
    }
    out.push_back(std::move(arg));
  }
  return out;
}

}  // namespace sluice::apps
