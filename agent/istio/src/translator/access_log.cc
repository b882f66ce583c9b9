// Access logging: whether a proxy logs (Telemetry in its namespace, then in the root
// namespace, then MeshConfig's accessLogFile) and the file access logger in Istio's text
// format that the HTTP connection managers and TCP proxies carry. istiod's counterpart is
// pilot/pkg/networking/core/accesslog.go.
#include "envoy/extensions/access_loggers/file/v3/file.pb.h"
#include "translator/builder.h"

namespace sluice::istio::detail {

namespace {

// Istio's default access log format (text), as its proxies print it.
constexpr char kAccessLogFormat[] =
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" "
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    "\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" "
    "\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER% "
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

}  // namespace

bool Builder::AccessLogEnabled() const {
  std::optional<bool> root, local;
  for (const auto& t : config_.telemetries) {
    if (!t.access_logging)
      continue;
    if (t.meta.ns == config_.mesh.root_namespace)
      root = t.access_logging;
    if (t.meta.ns == proxy_.ns)
      local = t.access_logging;
  }
  if (local)
    return *local;
  if (root)
    return *root;
  return !config_.mesh.access_log_file.empty();
}

void Builder::AddAccessLog(
    google::protobuf::RepeatedPtrField<envoy::config::accesslog::v3::AccessLog>* logs) const {
  if (!access_log_)
    return;
  envoy::extensions::access_loggers::file::v3::FileAccessLog file;
  file.set_path(config_.mesh.access_log_file.empty() ? "/dev/stdout"
                                                     : config_.mesh.access_log_file);
  file.mutable_log_format()->mutable_text_format_source()->set_inline_string(kAccessLogFormat);
  auto* log = logs->Add();
  log->set_name("envoy.access_loggers.file");
  log->mutable_typed_config()->PackFrom(file);
}

}  // namespace sluice::istio::detail
