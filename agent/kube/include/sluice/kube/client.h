// A small client of the Kubernetes API server, on libcurl (what Kubernetes' own C client
// uses): in-cluster or kubeconfig credentials, JSON requests, and list-then-watch
// reflectors that keep a local cache of one collection.
//
// It speaks the API's wire protocol as the API server defines it:
//   - every non-2xx answer carries a `Status` object; its reason and message reach the
//     caller in the error ("GET /api/v1/namespaces/x/pods/y: 404 NotFound: pods \"y\" not
//     found"), with Error::code the HTTP status;
//   - lists are paged (`limit`, `continue`) and carry the collection's resourceVersion;
//   - watches are chunked streams of newline-separated JSON events ADDED, MODIFIED,
//     DELETED, BOOKMARK (`allowWatchBookmarks`) and ERROR (a Status; 410 Gone when the
//     resourceVersion is older than what the server keeps);
//   - the bearer token is re-read from its file when the file changes (bound service
//     account tokens rotate about hourly), and once more after a 401.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "sluice/common/result.h"

namespace sluice::kube {

inline constexpr std::string_view kServiceAccountDir =
    "/var/run/secrets/kubernetes.io/serviceaccount";

// Where the API server is and how to authenticate to it.
struct ClientConfig {
  std::string server;      // "https://10.96.0.1:443"; "http://127.0.0.1:N" only in tests
  std::string ca_file;     // PEM bundle that verifies the server; empty: the system's
  std::string ca_data;     // PEM bundle given inline (kubeconfig certificate-authority-data)
  std::string token_file;  // bearer token, re-read when the file changes; empty: `token`
  std::string token;       // a fixed bearer token (kubeconfig `token`); empty: none
  std::string user_agent = "sluice";
  std::chrono::milliseconds request_timeout{10000};  // a whole non-watch request
  std::chrono::milliseconds connect_timeout{3000};
};

// The pod's own credentials: KUBERNETES_SERVICE_HOST / KUBERNETES_SERVICE_PORT and the
// service account directory's `token` and `ca.crt`. Errors name what is missing.
[[nodiscard]] Result<ClientConfig> InClusterConfig(
    std::string_view service_account_dir = kServiceAccountDir);
// The current context of a kubeconfig file: server, certificate-authority(-data) and
// token or tokenFile (what install-cni writes for the CNI plugin, as Istio's does).
[[nodiscard]] Result<ClientConfig> KubeconfigConfig(const std::string& path);

class Client {
 public:
  explicit Client(ClientConfig config);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Requests: path is the URL's path and query ("/api/v1/pods?fieldSelector=..."). A
  // 2xx answer is parsed as JSON; anything else is an Error whose code is the HTTP status
  // (0 when no answer came) and whose message names the method, path, status, and the
  // Status object's reason and message. Thread-safe.
  // A request given `stop` ends (an Error "stopped", code 0) soon after *stop is true.
  [[nodiscard]] Result<nlohmann::json> Get(std::string_view path,
                                           const std::atomic<bool>* stop = nullptr);
  [[nodiscard]] Result<nlohmann::json> Post(std::string_view path, const nlohmann::json& body);
  // Any method with an optional JSON body of this content type.
  [[nodiscard]] Result<nlohmann::json> Request(std::string_view method, std::string_view path,
                                               const nlohmann::json* body = nullptr,
                                               std::string_view content_type = "application/json",
                                               const std::atomic<bool>* stop = nullptr);

  // Streams a watch (the path carries watch=true and the resourceVersion). Calls on_event
  // with each event object ({"type": ..., "object": ...}) as it arrives; returns when the
  // server ends the stream (Ok), on a transport or HTTP error, when on_event returns
  // false, or soon after *stop becomes true.
  [[nodiscard]] Result<void> Watch(std::string_view path,
                                   const std::function<bool(const nlohmann::json&)>& on_event,
                                   const std::atomic<bool>* stop);

  const ClientConfig& config() const { return config_; }

 private:
  std::string Token(bool force_reread = false);  // re-read when its file changed
  ClientConfig config_;
  std::mutex token_mu_;
  std::string token_;
  // identity of the token file's last read (mtime, size, inode) to notice rotation
  struct FileStamp {
    long long mtime_ns = -1;
    long long size = -1;
    unsigned long long ino = 0;
  } token_stamp_;
};

// ---- Typed helpers (errors as Client's; 404 is an Error with code 404) ----

// GET /api/v1/namespaces/NS/pods/NAME.
[[nodiscard]] Result<nlohmann::json> GetPod(Client& c, std::string_view ns, std::string_view name);
// GET /api/v1/namespaces/NAME.
[[nodiscard]] Result<nlohmann::json> GetNamespace(Client& c, std::string_view name);
// GET /apis/apps/v1/namespaces/NS/daemonsets/NAME; nullopt when it is gone (404).
[[nodiscard]] Result<std::optional<nlohmann::json>> GetDaemonSet(Client& c, std::string_view ns,
                                                                 std::string_view name);

// TokenRequest (POST .../serviceaccounts/SA/token): a token for service account `sa` of
// namespace `ns` with this audience, bound to a pod (name and uid) when given, so it dies
// with the pod.
struct TokenRequestSpec {
  std::string ns;
  std::string service_account;
  std::string audience;
  std::string bound_pod_name;  // empty: not bound
  std::string bound_pod_uid;
  int64_t expiration_seconds = 3600;
};
struct IssuedToken {
  std::string token;
  std::chrono::system_clock::time_point expires;
};
[[nodiscard]] Result<IssuedToken> RequestToken(Client& c, const TokenRequestSpec& spec);

// TokenReview (POST /apis/authentication.k8s.io/v1/tokenreviews), as istiod checks an xDS
// client's token: authenticated, the audience among `audiences`, and the username.
struct ReviewedToken {
  bool authenticated = false;
  std::string username;             // "system:serviceaccount:NS:SA" for a service account
  std::vector<std::string> groups;  // "system:serviceaccounts" for a service account
  // The pod a bound token is bound to (user.extra "authentication.kubernetes.io/pod-name"
  // and "…/pod-uid"), empty otherwise.
  std::string pod_name, pod_uid;
  std::string error;  // the review's status.error when not authenticated
};
[[nodiscard]] Result<ReviewedToken> ReviewToken(Client& c, std::string_view token,
                                                const std::vector<std::string>& audiences);

// ---- Reflector: list, then watch, one collection; keeps its objects ----

struct ReflectorOptions {
  std::string path;            // the collection: "/api/v1/pods", "/api/v1/namespaces"
  std::string field_selector;  // "spec.nodeName=node-1"; empty: none
  std::string label_selector;
  int page_size = 500;  // list `limit`; the rest follows by `continue`
  // Each watch asks the server to end after a random time in [min, 2*min] (as client-go
  // does), so watches re-establish spread out in time.
  std::chrono::seconds watch_timeout_min{300};
  // Back-off after an error: starts here, doubles to max, with jitter; reset by success.
  std::chrono::milliseconds backoff_initial{500};
  std::chrono::milliseconds backoff_max{30000};
};

enum class EventType { kAdded, kModified, kDeleted };

struct ReflectorStatus {
  bool synced = false;  // the first list has been applied
  std::string resource_version;
  uint64_t lists = 0;    // full lists (the first, then one after each 410 or error)
  uint64_t watches = 0;  // watch streams opened
  uint64_t events = 0;   // ADDED/MODIFIED/DELETED applied (bookmarks not counted)
  uint64_t bookmarks = 0;
  uint64_t gone = 0;       // 410 Gone answers (expired resourceVersion or continue token)
  uint64_t errors = 0;     // other failed requests
  std::string last_error;  // "" when the last request went well
};

class Reflector {
 public:
  // Called on the reflector's thread for each change of one object ("NS/NAME", or "NAME"
  // for a cluster-scoped kind), after the cache has it. A relist after a 410 or an error
  // is diffed against the cache: objects that vanished meanwhile come as kDeleted, changed
  // ones as kModified (a changed resourceVersion), new ones as kAdded. on_synced is called
  // once after the first list.
  using OnEvent = std::function<void(EventType, const std::string& key, const nlohmann::json&)>;
  Reflector(Client& client, ReflectorOptions options, OnEvent on_event,
            std::function<void()> on_synced = {});
  ~Reflector();  // Stop()
  Reflector(const Reflector&) = delete;
  Reflector& operator=(const Reflector&) = delete;

  void Start();
  void Stop();  // ends the thread within about a second, even mid-watch

  bool HasSynced() const { return synced_.load(); }
  // A copy of the cache (key → object).
  std::map<std::string, nlohmann::json> Objects() const;
  ReflectorStatus Status() const;

 private:
  void Run();
  bool List();  // false: failed (counted, backoff follows)
  bool WatchOnce(bool* relist);
  void Sleep(std::chrono::milliseconds d);  // wakes on Stop()
  void NoteError(const std::string& error, bool gone);
  Client& client_;
  ReflectorOptions options_;
  OnEvent on_event_;
  std::function<void()> on_synced_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> synced_{false};
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  mutable std::mutex mu_;
  std::map<std::string, nlohmann::json> objects_;
  ReflectorStatus status_;
  std::thread thread_;
};

// "NS/NAME" (or "NAME") of an object, from its metadata.
std::string ObjectKey(const nlohmann::json& object);

}  // namespace sluice::kube
