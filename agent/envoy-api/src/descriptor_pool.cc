// Linking every compiled type into the generated pool, and printing messages whose Any
// payloads may name types that are not linked (descriptor_pool.h).
#include "sluice/envoy/descriptor_pool.h"

#include <google/protobuf/any.pb.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/wrappers.pb.h>

#include <memory>
#include <nlohmann/json.hpp>

namespace sluice::descriptors {
namespace internal {
const std::vector<std::string_view>& CompiledProtoFiles();  // generated
const void* AllTablesAnchor();                              // generated
}  // namespace internal

namespace {

using google::protobuf::Descriptor;
using google::protobuf::DescriptorPool;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

constexpr std::string_view kMarker = "\x01sluice-unlinked-any:";

std::string_view TypeName(std::string_view url) {
  auto slash = url.rfind('/');
  return slash == std::string_view::npos ? url : url.substr(slash + 1);
}

std::string Base64(const std::string& in) {
  static const char kChars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    out += {kChars[v >> 18], kChars[(v >> 12) & 63], kChars[(v >> 6) & 63], kChars[v & 63]};
  }
  if (i + 1 == in.size()) {
    const uint32_t v = uint8_t(in[i]) << 16;
    out += {kChars[v >> 18], kChars[(v >> 12) & 63], '=', '='};
  } else if (i + 2 == in.size()) {
    const uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8);
    out += {kChars[v >> 18], kChars[(v >> 12) & 63], kChars[(v >> 6) & 63], '='};
  }
  return out;
}

struct Unlinked {
  std::string type_url, value;
};

bool Sanitize(Message& m, std::vector<Unlinked>& found);

// An Any: unlinked -> a StringValue marker (restored after printing); linked -> its
// payload sanitized in turn and packed again when that changed anything.
bool SanitizeAny(Message& any, std::vector<Unlinked>& found) {
  const Descriptor* d = any.GetDescriptor();
  const Reflection* r = any.GetReflection();
  const FieldDescriptor* url_f = d->FindFieldByNumber(1);
  const FieldDescriptor* value_f = d->FindFieldByNumber(2);
  const std::string url = r->GetString(any, url_f);
  if (url.empty())
    return false;
  const Descriptor* inner =
      DescriptorPool::generated_pool()->FindMessageTypeByName(std::string(TypeName(url)));
  const std::string value = r->GetString(any, value_f);
  if (inner == nullptr) {
    google::protobuf::StringValue marker;
    marker.set_value(std::string(kMarker) + std::to_string(found.size()));
    found.push_back({url, value});
    r->SetString(&any, url_f, "type.googleapis.com/google.protobuf.StringValue");
    r->SetString(&any, value_f, marker.SerializeAsString());
    return true;
  }
  std::unique_ptr<Message> payload(
      google::protobuf::MessageFactory::generated_factory()->GetPrototype(inner)->New());
  if (!payload->ParseFromString(value) || !Sanitize(*payload, found))
    return false;
  r->SetString(&any, value_f, payload->SerializeAsString());
  return true;
}

bool Sanitize(Message& m, std::vector<Unlinked>& found) {
  if (m.GetDescriptor()->full_name() == "google.protobuf.Any")
    return SanitizeAny(m, found);
  const Reflection* r = m.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  r->ListFields(m, &fields);
  bool changed = false;
  for (const FieldDescriptor* f : fields) {
    if (f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE)
      continue;
    if (f->is_repeated()) {
      for (int i = 0; i < r->FieldSize(m, f); ++i)
        changed |= Sanitize(*r->MutableRepeatedMessage(&m, f, i), found);
    } else {
      changed |= Sanitize(*r->MutableMessage(&m, f), found);
    }
  }
  return changed;
}

void Restore(nlohmann::ordered_json& j, const std::vector<Unlinked>& found) {
  if (j.is_object()) {
    auto v = j.find("value");
    if (v != j.end() && v->is_string()) {
      const std::string& s = v->get_ref<const std::string&>();
      if (s.starts_with(kMarker)) {
        const std::size_t n = std::stoul(s.substr(kMarker.size()));
        if (n < found.size()) {
          j = nlohmann::ordered_json{{"@type", found[n].type_url},
                                     {"value", Base64(found[n].value)}};
          return;
        }
      }
    }
    for (auto& [k, child] : j.items())
      Restore(child, found);
  } else if (j.is_array()) {
    for (auto& child : j)
      Restore(child, found);
  }
}

}  // namespace

const std::vector<std::string_view>& CompiledProtoFiles() {
  return internal::CompiledProtoFiles();
}

std::size_t LinkAllTypes() {
  static const std::size_t kLinked = [] {
    volatile const void* anchor = internal::AllTablesAnchor();
    (void)anchor;
    std::size_t n = 0;
    for (std::string_view f : internal::CompiledProtoFiles())
      n += DescriptorPool::generated_pool()->FindFileByName(std::string(f)) != nullptr;
    return n;
  }();
  return kLinked;
}

bool IsLinkedType(std::string_view type_url) {
  LinkAllTypes();
  return DescriptorPool::generated_pool()->FindMessageTypeByName(std::string(TypeName(type_url))) !=
         nullptr;
}

std::string MessageToJson(const Message& msg,
                          const google::protobuf::util::JsonPrintOptions& options,
                          std::vector<std::string>* unknown) {
  LinkAllTypes();
  std::string out;
  if (google::protobuf::util::MessageToJsonString(msg, &out, options).ok())
    return out;
  std::unique_ptr<Message> copy(msg.New());
  copy->CopyFrom(msg);
  std::vector<Unlinked> found;
  Sanitize(*copy, found);
  out.clear();
  auto st = google::protobuf::util::MessageToJsonString(*copy, &out, options);
  if (!st.ok()) {
    return nlohmann::json{{"@type", "type.googleapis.com/" + msg.GetDescriptor()->full_name()},
                          {"error", std::string(st.message())}}
        .dump();
  }
  if (unknown != nullptr) {
    for (const auto& u : found)
      unknown->push_back(u.type_url);
  }
  auto j = nlohmann::ordered_json::parse(out, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded())
    return out;
  Restore(j, found);
  return options.add_whitespace ? j.dump(1) : j.dump();
}

}  // namespace sluice::descriptors
