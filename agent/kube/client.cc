// Requests to the API server on libcurl: one easy handle per request (so threads never
// share one), driven by a multi handle so a caller's stop flag ends even an idle watch
// within a tenth of a second. Non-2xx answers become Errors naming the API's Status.
#include <curl/curl.h>
#include <sys/stat.h>

#include <chrono>
#include <ctime>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>

#include <spdlog/spdlog.h>

#include "sluice/kube/client.h"

namespace sluice::kube {
namespace {

void GlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// "GET /api/v1/...: 404 NotFound: pods \"x\" not found", the HTTP status as the code.
Error StatusError(std::string_view method, std::string_view path, long code,
                  const std::string& body) {
  std::string msg = std::string(method) + " " + std::string(path) + ": " + std::to_string(code);
  auto status = nlohmann::json::parse(body, nullptr, false);
  if (status.is_object() && status.value("kind", "") == "Status") {
    if (auto r = status.value("reason", ""); !r.empty())
      msg += " " + r;
    if (auto m = status.value("message", ""); !m.empty())
      msg += ": " + m;
  } else if (!body.empty()) {
    msg += ": " + body.substr(0, 200);
  }
  return Error{std::move(msg), static_cast<int>(code)};
}

struct Transfer {
  CURL* easy = nullptr;
  std::string body;  // the whole answer, or (streaming) an error answer / partial line
  // Streaming: called with each complete line of a 2xx answer; false ends the transfer.
  std::function<bool(std::string_view)> on_line;
  bool refused = false;  // on_line said stop
  const std::atomic<bool>* stop = nullptr;
};

size_t OnData(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t len = size * n;
  long code = 0;
  curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &code);
  if (!t->on_line || code < 200 || code >= 300) {
    if (t->body.size() < (16u << 20))
      t->body.append(data, len);
    return len;
  }
  t->body.append(data, len);
  size_t start = 0;
  for (size_t nl; (nl = t->body.find('\n', start)) != std::string::npos; start = nl + 1) {
    std::string_view line(t->body.data() + start, nl - start);
    if (!line.empty() && line.back() == '\r')
      line.remove_suffix(1);
    if (!line.empty() && !t->on_line(line)) {
      t->refused = true;
      return 0;  // ends the transfer (CURLE_WRITE_ERROR, told apart by `refused`)
    }
  }
  t->body.erase(0, start);
  return len;
}

int OnProgress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* t = static_cast<Transfer*>(user);
  return t->stop != nullptr && t->stop->load() ? 1 : 0;
}

std::string Trim(std::string s) {
  while (!s.empty() &&
         (s.back() == '\n' || s.back() == '\r' || s.back() == ' ' || s.back() == '\t'))
    s.pop_back();
  size_t i = 0;
  while (i < s.size() && (s[i] == ' ' || s[i] == '\t'))
    ++i;
  return s.substr(i);
}

}  // namespace

Client::Client(ClientConfig config) : config_(std::move(config)) {
  GlobalInit();
  while (!config_.server.empty() && config_.server.back() == '/')
    config_.server.pop_back();
}

Client::~Client() = default;

std::string Client::Token(bool force_reread) {
  std::lock_guard lock(token_mu_);
  if (config_.token_file.empty())
    return config_.token;
  struct stat st {};
  if (::stat(config_.token_file.c_str(), &st) != 0) {
    spdlog::warn("kube: token file {}: {}; keeping the last token", config_.token_file,
                 std::strerror(errno));
    return token_;
  }
  FileStamp now{static_cast<long long>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec,
                static_cast<long long>(st.st_size), static_cast<unsigned long long>(st.st_ino)};
  if (!force_reread && now.mtime_ns == token_stamp_.mtime_ns && now.size == token_stamp_.size &&
      now.ino == token_stamp_.ino)
    return token_;
  std::ifstream in(config_.token_file);
  if (!in) {
    spdlog::warn("kube: token file {}: cannot open; keeping the last token", config_.token_file);
    return token_;
  }
  std::ostringstream text;
  text << in.rdbuf();
  token_ = Trim(text.str());
  token_stamp_ = now;
  return token_;
}

Result<nlohmann::json> Client::Get(std::string_view path, const std::atomic<bool>* stop) {
  return Request("GET", path, nullptr, "application/json", stop);
}

Result<nlohmann::json> Client::Post(std::string_view path, const nlohmann::json& body) {
  return Request("POST", path, &body);
}

namespace {

// One request on its own easy handle. `on_line` set: a streaming watch (no total timeout).
Result<long> Perform(const ClientConfig& config, const std::string& token, std::string_view method,
                     std::string_view path, const std::string* body, std::string_view content_type,
                     Transfer& t) {
  std::unique_ptr<CURL, decltype(&curl_easy_cleanup)> easy(curl_easy_init(), curl_easy_cleanup);
  std::unique_ptr<CURLM, decltype(&curl_multi_cleanup)> multi(curl_multi_init(),
                                                              curl_multi_cleanup);
  if (!easy || !multi)
    return Fail(std::string(method) + " " + std::string(path) + ": curl: cannot make a handle");
  CURL* e = easy.get();
  t.easy = e;
  const std::string url = config.server + std::string(path);
  char errbuf[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(e, CURLOPT_URL, url.c_str());
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_USERAGENT, config.user_agent.c_str());
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(config.connect_timeout.count()));
  if (!t.on_line)
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, static_cast<long>(config.request_timeout.count()));
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, OnData);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, OnProgress);
  curl_easy_setopt(e, CURLOPT_XFERINFODATA, &t);
  if (!config.ca_file.empty())
    curl_easy_setopt(e, CURLOPT_CAINFO, config.ca_file.c_str());
  struct curl_blob blob {};
  if (!config.ca_data.empty()) {
    blob.data = const_cast<char*>(config.ca_data.data());
    blob.len = config.ca_data.size();
    blob.flags = CURL_BLOB_NOCOPY;
    curl_easy_setopt(e, CURLOPT_CAINFO_BLOB, &blob);
  }
  const std::string m(method);
  if (m == "POST" && body == nullptr)
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, 0L);
  if (m != "GET")
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, m.c_str());
  if (body != nullptr) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body->c_str());
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, static_cast<long>(body->size()));
  }
  curl_slist* headers = nullptr;
  headers = curl_slist_append(headers, "Accept: application/json");
  if (body != nullptr)
    headers = curl_slist_append(headers, ("Content-Type: " + std::string(content_type)).c_str());
  if (!token.empty())
    headers = curl_slist_append(headers, ("Authorization: Bearer " + token).c_str());
  std::unique_ptr<curl_slist, decltype(&curl_slist_free_all)> header_list(headers,
                                                                          curl_slist_free_all);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);

  curl_multi_add_handle(multi.get(), e);
  CURLcode result = CURLE_OK;
  bool stopped = false;
  for (;;) {
    int running = 0;
    if (CURLMcode mc = curl_multi_perform(multi.get(), &running); mc != CURLM_OK) {
      curl_multi_remove_handle(multi.get(), e);
      return Fail(m + " " + std::string(path) + ": curl: " + curl_multi_strerror(mc));
    }
    if (running == 0) {
      int left = 0;
      while (CURLMsg* msg = curl_multi_info_read(multi.get(), &left))
        if (msg->msg == CURLMSG_DONE)
          result = msg->data.result;
      break;
    }
    if (t.stop != nullptr && t.stop->load()) {
      stopped = true;
      break;
    }
    curl_multi_poll(multi.get(), nullptr, 0, 100, nullptr);
  }
  curl_multi_remove_handle(multi.get(), e);
  if (stopped || result == CURLE_ABORTED_BY_CALLBACK)
    return Fail(m + " " + std::string(path) + ": stopped", 0);
  long code = 0;
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
  if (result != CURLE_OK && !(result == CURLE_WRITE_ERROR && t.refused)) {
    std::string detail = errbuf[0] != '\0' ? errbuf : curl_easy_strerror(result);
    return Fail(m + " " + std::string(path) + ": " + config.server + ": " + detail, 0);
  }
  return code;
}

}  // namespace

Result<nlohmann::json> Client::Request(std::string_view method, std::string_view path,
                                       const nlohmann::json* body, std::string_view content_type,
                                       const std::atomic<bool>* stop) {
  const std::string text = body != nullptr ? body->dump() : std::string();
  for (int attempt = 0;; ++attempt) {
    const std::string token = Token(attempt > 0);
    Transfer t;
    t.stop = stop;
    auto code =
        Perform(config_, token, method, path, body != nullptr ? &text : nullptr, content_type, t);
    SLUICE_RETURN_IF_ERROR(code);
    // A 401 may be a token that rotated since the last read: re-read it once and retry.
    if (*code == 401 && attempt == 0 && !config_.token_file.empty() && Token(true) != token)
      continue;
    if (*code < 200 || *code >= 300)
      return std::unexpected(StatusError(method, path, *code, t.body));
    if (t.body.empty())
      return nlohmann::json::object();
    auto json = nlohmann::json::parse(t.body, nullptr, false);
    if (json.is_discarded())
      return Fail(std::string(method) + " " + std::string(path) + ": " + std::to_string(*code) +
                      ": the answer is not JSON",
                  static_cast<int>(*code));
    return json;
  }
}

Result<void> Client::Watch(std::string_view path,
                           const std::function<bool(const nlohmann::json&)>& on_event,
                           const std::atomic<bool>* stop) {
  for (int attempt = 0;; ++attempt) {
    const std::string token = Token(attempt > 0);
    Transfer t;
    t.stop = stop;
    std::string bad_line;
    t.on_line = [&](std::string_view line) {
      auto event = nlohmann::json::parse(line, nullptr, false);
      if (!event.is_object()) {
        bad_line = std::string(line.substr(0, 200));
        return false;
      }
      return on_event(event);
    };
    auto code = Perform(config_, token, "GET", path, nullptr, "", t);
    if (!code && stop != nullptr && stop->load())
      return {};
    SLUICE_RETURN_IF_ERROR(code);
    if (*code == 401 && attempt == 0 && !config_.token_file.empty() && Token(true) != token)
      continue;
    if (*code < 200 || *code >= 300)
      return std::unexpected(StatusError("GET", path, *code, t.body));
    if (!bad_line.empty())
      return Fail("GET " + std::string(path) + ": a watch event is not a JSON object: " + bad_line);
    if (!t.refused && !t.body.empty()) {  // a last event without its newline
      auto event = nlohmann::json::parse(t.body, nullptr, false);
      if (event.is_object())
        (void)on_event(event);
    }
    return {};
  }
}

// ---- Typed helpers ----

Result<nlohmann::json> GetPod(Client& c, std::string_view ns, std::string_view name) {
  return c.Get("/api/v1/namespaces/" + std::string(ns) + "/pods/" + std::string(name));
}

Result<nlohmann::json> GetNamespace(Client& c, std::string_view name) {
  return c.Get("/api/v1/namespaces/" + std::string(name));
}

Result<std::optional<nlohmann::json>> GetDaemonSet(Client& c, std::string_view ns,
                                                   std::string_view name) {
  auto ds =
      c.Get("/apis/apps/v1/namespaces/" + std::string(ns) + "/daemonsets/" + std::string(name));
  if (!ds && ds.error().code == 404)
    return std::optional<nlohmann::json>();
  SLUICE_RETURN_IF_ERROR(ds);
  return std::optional<nlohmann::json>(std::move(*ds));
}

namespace {

// RFC 3339 in UTC as the API writes it ("2026-12-07T04:00:00Z").
std::optional<std::chrono::system_clock::time_point> ParseTime(const std::string& s) {
  std::tm tm{};
  if (strptime(s.c_str(), "%Y-%m-%dT%H:%M:%S", &tm) == nullptr)
    return std::nullopt;
  return std::chrono::system_clock::from_time_t(timegm(&tm));
}

}  // namespace

Result<IssuedToken> RequestToken(Client& c, const TokenRequestSpec& spec) {
  nlohmann::json body = {{"apiVersion", "authentication.k8s.io/v1"},
                         {"kind", "TokenRequest"},
                         {"spec",
                          {{"audiences", nlohmann::json::array({spec.audience})},
                           {"expirationSeconds", spec.expiration_seconds}}}};
  if (!spec.bound_pod_name.empty())
    body["spec"]["boundObjectRef"] = {{"kind", "Pod"},
                                      {"apiVersion", "v1"},
                                      {"name", spec.bound_pod_name},
                                      {"uid", spec.bound_pod_uid}};
  const std::string path =
      "/api/v1/namespaces/" + spec.ns + "/serviceaccounts/" + spec.service_account + "/token";
  auto answer = c.Post(path, body);
  SLUICE_RETURN_IF_ERROR(answer);
  const auto& status = (*answer)["status"];
  if (!status.is_object() || !status.contains("token") || !status["token"].is_string())
    return Fail("POST " + path + ": the TokenRequest's answer has no status.token");
  IssuedToken out;
  out.token = status["token"].get<std::string>();
  auto expires = ParseTime(status.value("expirationTimestamp", ""));
  out.expires =
      expires ? *expires
              : std::chrono::system_clock::now() + std::chrono::seconds(spec.expiration_seconds);
  return out;
}

Result<ReviewedToken> ReviewToken(Client& c, std::string_view token,
                                  const std::vector<std::string>& audiences) {
  nlohmann::json body = {{"apiVersion", "authentication.k8s.io/v1"},
                         {"kind", "TokenReview"},
                         {"spec", {{"token", std::string(token)}}}};
  if (!audiences.empty())
    body["spec"]["audiences"] = audiences;
  auto answer = c.Post("/apis/authentication.k8s.io/v1/tokenreviews", body);
  SLUICE_RETURN_IF_ERROR(answer);
  const auto& status = (*answer)["status"];
  ReviewedToken out;
  if (!status.is_object())
    return out;
  out.authenticated = status.value("authenticated", false);
  if (status.contains("user") && status["user"].is_object())
    out.username = status["user"].value("username", "");
  out.error = status.value("error", "");
  return out;
}

std::string ObjectKey(const nlohmann::json& object) {
  const auto& meta = object.contains("metadata") ? object["metadata"] : nlohmann::json();
  if (!meta.is_object())
    return {};
  const std::string name = meta.value("name", "");
  const std::string ns = meta.value("namespace", "");
  return ns.empty() ? name : ns + "/" + name;
}

}  // namespace sluice::kube
