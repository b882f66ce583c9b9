// List-then-watch of one collection, as client-go's reflector: a paged list gives the
// objects and a resourceVersion; a watch from that version gives the changes; bookmarks
// move the version on; a 410 Gone (the version or a continue token older than what the
// server keeps) means list again and diff the new list against the cache, so an object
// deleted while nobody watched still reaches the caller as a deletion.
#include <algorithm>
#include <random>
#include <string>

#include <spdlog/spdlog.h>

#include "sluice/kube/client.h"

namespace sluice::kube {
namespace {

std::string Escape(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

std::string ResourceVersion(const nlohmann::json& o) {
  if (!o.is_object() || !o.contains("metadata") || !o["metadata"].is_object())
    return {};
  return o["metadata"].value("resourceVersion", "");
}

double Uniform(double lo, double hi) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return std::uniform_real_distribution<double>(lo, hi)(rng);
}

}  // namespace

Reflector::Reflector(Client& client, ReflectorOptions options, OnEvent on_event,
                     std::function<void()> on_synced)
    : client_(client),
      options_(std::move(options)),
      on_event_(std::move(on_event)),
      on_synced_(std::move(on_synced)) {}

Reflector::~Reflector() {
  Stop();
}

void Reflector::Start() {
  if (thread_.joinable())
    return;
  stop_ = false;
  thread_ = std::thread([this] { Run(); });
}

void Reflector::Stop() {
  {
    std::lock_guard lock(stop_mu_);
    stop_ = true;
  }
  stop_cv_.notify_all();
  if (thread_.joinable())
    thread_.join();
}

std::map<std::string, nlohmann::json> Reflector::Objects() const {
  std::lock_guard lock(mu_);
  return objects_;
}

ReflectorStatus Reflector::Status() const {
  std::lock_guard lock(mu_);
  return status_;
}

void Reflector::Sleep(std::chrono::milliseconds d) {
  std::unique_lock lock(stop_mu_);
  stop_cv_.wait_for(lock, d, [this] { return stop_.load(); });
}

void Reflector::NoteError(const std::string& error, bool gone) {
  std::lock_guard lock(mu_);
  if (gone)
    ++status_.gone;
  else
    ++status_.errors;
  status_.last_error = error;
}

bool Reflector::List() {
  std::string selectors;
  if (!options_.field_selector.empty())
    selectors += "&fieldSelector=" + Escape(options_.field_selector);
  if (!options_.label_selector.empty())
    selectors += "&labelSelector=" + Escape(options_.label_selector);
  std::map<std::string, nlohmann::json> fresh;
  std::string rv;
  // A continue token that expires mid-list (410) restarts the list; the third time it
  // is one unpaged list, which no compaction can break.
  for (int round = 0;; ++round) {
    fresh.clear();
    std::string cont;
    bool expired = false;
    const bool paged = options_.page_size > 0 && round < 2;
    do {
      std::string path = options_.path + "?resourceVersion=";
      if (paged)
        path += "&limit=" + std::to_string(options_.page_size);
      if (!cont.empty()) {
        path = options_.path + "?limit=" + std::to_string(options_.page_size) +
               "&continue=" + Escape(cont);
      }
      path += selectors;
      auto page = client_.Get(path, &stop_);
      if (stop_)
        return false;
      if (!page) {
        if (page.error().code == 410 && !cont.empty()) {
          NoteError("list " + options_.path + ": " + page.error().message, true);
          expired = true;
          break;
        }
        NoteError("list " + options_.path + ": " + page.error().message, false);
        return false;
      }
      if (page->contains("items") && (*page)["items"].is_array())
        for (auto& item : (*page)["items"]) {
          std::string key = ObjectKey(item);  // before the move below
          fresh[std::move(key)] = std::move(item);
        }
      const auto& meta = (*page)["metadata"];
      rv = meta.is_object() ? meta.value("resourceVersion", "") : "";
      cont = meta.is_object() ? meta.value("continue", "") : "";
    } while (!cont.empty() && !stop_);
    if (!expired)
      break;
    spdlog::info("kube: list {}: continue token expired; listing again from the start",
                 options_.path);
  }
  // Diff against the cache: what vanished is a deletion, a new version a modification.
  std::vector<std::tuple<EventType, std::string, nlohmann::json>> changes;
  bool first = false;
  {
    std::lock_guard lock(mu_);
    for (const auto& [key, old] : objects_)
      if (!fresh.contains(key))
        changes.emplace_back(EventType::kDeleted, key, old);
    for (const auto& [key, obj] : fresh) {
      auto it = objects_.find(key);
      if (it == objects_.end())
        changes.emplace_back(EventType::kAdded, key, obj);
      else if (ResourceVersion(it->second) != ResourceVersion(obj))
        changes.emplace_back(EventType::kModified, key, obj);
    }
    objects_ = std::move(fresh);
    status_.resource_version = rv;
    ++status_.lists;
    status_.events += changes.size();
    status_.last_error.clear();
    first = !status_.synced;
    status_.synced = true;
  }
  for (const auto& [type, key, obj] : changes)
    if (on_event_)
      on_event_(type, key, obj);
  if (first) {
    synced_ = true;
    if (on_synced_)
      on_synced_();
  }
  return true;
}

// One watch from the cache's version. False: an error (backoff, then relist). *relist:
// the version expired (410).
bool Reflector::WatchOnce(bool* relist) {
  *relist = false;
  std::string rv;
  {
    std::lock_guard lock(mu_);
    rv = status_.resource_version;
    ++status_.watches;
  }
  const auto min = options_.watch_timeout_min.count();
  const long long timeout = min + static_cast<long long>(Uniform(0, static_cast<double>(min) + 1));
  std::string path = options_.path +
                     "?watch=true&allowWatchBookmarks=true&resourceVersion=" + Escape(rv) +
                     "&timeoutSeconds=" + std::to_string(std::max(1LL, timeout));
  if (!options_.field_selector.empty())
    path += "&fieldSelector=" + Escape(options_.field_selector);
  if (!options_.label_selector.empty())
    path += "&labelSelector=" + Escape(options_.label_selector);
  std::string stream_error;
  bool gone = false;
  auto done = client_.Watch(
      path,
      [&](const nlohmann::json& event) {
        const std::string type = event.value("type", "");
        const nlohmann::json& obj = event.contains("object") ? event["object"] : nlohmann::json();
        if (type == "BOOKMARK") {
          std::lock_guard lock(mu_);
          status_.resource_version = ResourceVersion(obj);
          ++status_.bookmarks;
          return true;
        }
        if (type == "ERROR") {
          const int code = obj.is_object() ? obj.value("code", 0) : 0;
          gone = code == 410;
          stream_error =
              "watch " + options_.path + ": ERROR " + std::to_string(code) + " " +
              (obj.is_object() ? obj.value("reason", "") + ": " + obj.value("message", "")
                               : std::string());
          return false;
        }
        EventType t;
        if (type == "ADDED")
          t = EventType::kAdded;
        else if (type == "MODIFIED")
          t = EventType::kModified;
        else if (type == "DELETED")
          t = EventType::kDeleted;
        else {
          stream_error = "watch " + options_.path + ": unknown event type \"" + type + "\"";
          return false;
        }
        const std::string key = ObjectKey(obj);
        {
          std::lock_guard lock(mu_);
          if (t == EventType::kDeleted)
            objects_.erase(key);
          else
            objects_[key] = obj;
          status_.resource_version = ResourceVersion(obj);
          ++status_.events;
          status_.last_error.clear();
        }
        if (on_event_)
          on_event_(t, key, obj);
        return true;
      },
      &stop_);
  if (stop_)
    return true;
  if (!done) {
    gone = done.error().code == 410;
    stream_error = "watch " + options_.path + ": " + done.error().message;
  }
  if (!stream_error.empty()) {
    NoteError(stream_error, gone);
    if (gone) {
      spdlog::info("kube: {}; listing again", stream_error);
      *relist = true;
      return true;
    }
    spdlog::warn("kube: {}", stream_error);
    return false;
  }
  return true;  // the server ended the watch (its timeout): watch again from the version
}

void Reflector::Run() {
  auto backoff = options_.backoff_initial;
  bool need_list = true;
  while (!stop_) {
    bool ok;
    if (need_list) {
      ok = List();
      need_list = !ok;
    } else {
      bool relist = false;
      ok = WatchOnce(&relist);
      need_list = relist || !ok;
    }
    if (stop_)
      break;
    if (ok) {
      if (!need_list)
        backoff = options_.backoff_initial;
      continue;
    }
    const auto wait = std::chrono::milliseconds(
        static_cast<long long>(static_cast<double>(backoff.count()) * Uniform(0.5, 1.5)));
    {
      std::lock_guard lock(mu_);
      spdlog::debug("kube: {}: backing off {} ms after: {}", options_.path, wait.count(),
                    status_.last_error);
    }
    Sleep(wait);
    backoff = std::min(options_.backoff_max, backoff * 2);
  }
}

}  // namespace sluice::kube
