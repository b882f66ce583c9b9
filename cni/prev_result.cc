#include "prev_result.h"

#include <arpa/inet.h>

#include <cstdint>

namespace sluice::cni {
namespace {

using ojson = nlohmann::ordered_json;

// An IPv4 or IPv6 address; its width in bits, or 0 when it is not one.
int AddressBits(const std::string& text) {
  unsigned char buf[16];
  if (::inet_pton(AF_INET, text.c_str(), buf) == 1)
    return 32;
  if (::inet_pton(AF_INET6, text.c_str(), buf) == 1)
    return 128;
  return 0;
}

// "10.1.0.5/24" or "fd00::5/64": an address and a prefix length that fits it.
bool IsCidr(const std::string& text) {
  auto slash = text.find('/');
  if (slash == std::string::npos)
    return false;
  const int bits = AddressBits(text.substr(0, slash));
  const std::string len = text.substr(slash + 1);
  if (bits == 0 || len.empty() || len.size() > 3 ||
      len.find_first_not_of("0123456789") != std::string::npos) {
    return false;
  }
  return std::stoi(len) <= bits;
}

// Collects the first problem; each accessor returns the value when it has the right type
// and nullptr when it is absent, null or wrong (then the problem names it).
class Check {
 public:
  std::string problem;

  void Fail(const std::string& path, const std::string& what) {
    if (problem.empty())
      problem = path + ": " + what;
  }

  const ojson* Member(const ojson& obj, const std::string& path, const char* key, bool required) {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) {
      if (required)
        Fail(path + "." + key, "is required");
      return nullptr;
    }
    return &*it;
  }
  const std::string* String(const ojson& obj, const std::string& path, const char* key,
                            bool required = false) {
    const ojson* v = Member(obj, path, key, required);
    if (v && !v->is_string()) {
      Fail(path + "." + key, "must be a string");
      return nullptr;
    }
    return v ? v->get_ptr<const std::string*>() : nullptr;
  }
  const ojson* Typed(const ojson& obj, const std::string& path, const char* key,
                     ojson::value_t type, const char* what) {
    const ojson* v = Member(obj, path, key, false);
    if (v && v->type() != type) {
      Fail(path + "." + key, std::string("must be ") + what);
      return nullptr;
    }
    return v;
  }
  const ojson* Array(const ojson& obj, const std::string& path, const char* key) {
    return Typed(obj, path, key, ojson::value_t::array, "an array");
  }
  const ojson* Object(const ojson& obj, const std::string& path, const char* key) {
    return Typed(obj, path, key, ojson::value_t::object, "an object");
  }
  // The objects of an array field, each with its path; a non-object element fails.
  template <class Fn>
  void EachObject(const ojson& obj, const std::string& path, const char* key, Fn fn) {
    const ojson* list = Array(obj, path, key);
    if (!list)
      return;
    for (std::size_t i = 0; i < list->size() && problem.empty(); ++i) {
      const std::string at = path + "." + key + "[" + std::to_string(i) + "]";
      if (!(*list)[i].is_object()) {
        Fail(at, "must be an object");
        return;
      }
      fn((*list)[i], at);
    }
  }
  void Cidr(const ojson& obj, const std::string& path, const char* key, bool required) {
    const std::string* s = String(obj, path, key, required);
    if (s && !IsCidr(*s)) {
      Fail(path + "." + key,
           "must be an IP address with its prefix length, e.g. \"10.1.0.5/24\" (got \"" + *s +
               "\")");
    }
  }
  void Ip(const ojson& obj, const std::string& path, const char* key) {
    const std::string* s = String(obj, path, key);
    if (s && AddressBits(*s) == 0)
      Fail(path + "." + key, "must be an IP address (got \"" + *s + "\")");
  }
  void StringArray(const ojson& obj, const std::string& path, const char* key) {
    const ojson* list = Typed(obj, path, key, ojson::value_t::array, "an array of strings");
    if (!list)
      return;
    for (std::size_t i = 0; i < list->size(); ++i) {
      if (!(*list)[i].is_string()) {
        Fail(path + "." + key + "[" + std::to_string(i) + "]", "must be a string");
        return;
      }
    }
  }
};

}  // namespace

std::string PrevResultProblem(const ojson& prev) {
  const std::string p = "prevResult";
  Check c;
  c.String(prev, p, "cniVersion");
  std::size_t interfaces = 0;
  c.EachObject(prev, p, "interfaces", [&](const ojson& itf, const std::string& at) {
    c.String(itf, at, "name", /*required=*/true);
    c.String(itf, at, "mac");
    c.String(itf, at, "sandbox");
    ++interfaces;
  });
  c.EachObject(prev, p, "ips", [&](const ojson& ip, const std::string& at) {
    c.Cidr(ip, at, "address", /*required=*/true);
    c.Ip(ip, at, "gateway");
    const ojson* index = c.Member(ip, at, "interface", false);
    if (!index)
      return;
    // An index: JSON numbers such as 1.0 or -1 are not, whatever their type in the parser.
    if (!index->is_number_unsigned()) {
      c.Fail(at + ".interface",
             "must be a non-negative integer (an index into " + p + ".interfaces)");
    } else if (index->get<std::uint64_t>() >= interfaces) {
      c.Fail(at + ".interface", std::to_string(index->get<std::uint64_t>()) +
                                    " is not an index into " + p + ".interfaces (" +
                                    std::to_string(interfaces) + " entries)");
    }
  });
  c.EachObject(prev, p, "routes", [&](const ojson& route, const std::string& at) {
    c.Cidr(route, at, "dst", /*required=*/true);
    c.Ip(route, at, "gw");
  });
  if (const ojson* dns = c.Object(prev, p, "dns")) {
    const std::string at = p + ".dns";
    c.StringArray(*dns, at, "nameservers");
    c.String(*dns, at, "domain");
    c.StringArray(*dns, at, "search");
    c.StringArray(*dns, at, "options");
  }
  return c.problem;
}

}  // namespace sluice::cni
