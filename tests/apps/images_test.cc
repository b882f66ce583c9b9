// The image map: normalisation, the shipped images.json, and errors that name the field.
#include <catch2/catch.hpp>

#include "images.h"

using namespace sluice::apps;

TEST_CASE("image references are normalised before matching") {
  CHECK(NormalizeImage("docker.io/kennethreitz/httpbin") == "kennethreitz/httpbin");
  CHECK(NormalizeImage("docker.io/mccutchen/go-httpbin:v2.15.0") == "mccutchen/go-httpbin");
  CHECK(NormalizeImage("curlimages/curl@sha256:abcd") == "curlimages/curl");
  CHECK(NormalizeImage("docker.io/library/nginx:1.25") == "nginx");
  CHECK(NormalizeImage("localhost:5000/team/app:1") == "localhost:5000/team/app");
}

TEST_CASE("the shipped images.json maps every sample image Sluice stands in for") {
  auto map = ImageMap::Load(SLUICE_IMAGES_JSON);
  REQUIRE(map.has_value());
  const ImageEntry* bin = map->Find("docker.io/kennethreitz/httpbin");
  REQUIRE(bin);
  CHECK(ExpandCommand(*bin, "/opt/sluice-apps", std::nullopt) ==
        std::vector<std::string>{"/opt/sluice-apps", "httpbin", "--port", "80"});
  // Istio's httpbin sample between kennethreitz and go-httpbin: gunicorn bound to 8080.
  const ImageEntry* kong = map->Find("docker.io/kong/httpbin");
  REQUIRE(kong);
  CHECK(ExpandCommand(*kong, "B", 8080) ==
        std::vector<std::string>{"B", "httpbin", "--port", "8080"});
  const ImageEntry* go = map->Find("docker.io/mccutchen/go-httpbin:v2.15.0");
  REQUIRE(go);
  CHECK(ExpandCommand(*go, "B", 8080) ==
        std::vector<std::string>{"B", "httpbin", "--style", "go-httpbin", "--port", "8080"});
  for (auto [image, version] : {std::pair{"docker.io/istio/examples-helloworld-v1", "v1"},
                                {"docker.io/istio/examples-helloworld-v2:1.0", "v2"}}) {
    const ImageEntry* hw = map->Find(image);
    REQUIRE(hw);
    CHECK(hw->env.at("SERVICE_VERSION") == version);
    CHECK(ExpandCommand(*hw, "B", std::nullopt).back() == "5000");
  }
  // Istio's echo app (samples/grpc-echo): the container's args, as the sample gives them.
  const std::vector<std::string> echo_args = {"--metrics=15014", "--port",
                                              "18080",           "--tcp",
                                              "19090",           "--xds-grpc-server=17070",
                                              "--grpc",          "17070",
                                              "--grpc",          "17171",
                                              "--port",          "3333",
                                              "--port",          "8080",
                                              "--version",       "v1",
                                              "--crt=/cert.crt", "--key=/cert.key"};
  for (const char* image : {"registry.istio.io/testing/app:latest", "gcr.io/istio-testing/app"}) {
    const ImageEntry* app = map->Find(image);
    REQUIRE(app);
    CHECK(app->standin == "grpc-echo");
    std::vector<std::string> want = {"B", "grpc-echo"};
    want.insert(want.end(), echo_args.begin(), echo_args.end());
    CHECK(ExpandCommand(*app, "B", 17070, echo_args) == want);
  }
  const ImageEntry* curl = map->Find("curlimages/curl:8.8.0");
  REQUIRE(curl);
  CHECK_FALSE(curl->command.has_value());
  CHECK(map->Find("docker.io/istio/examples-bookinfo-ratings-v1") == nullptr);
}

TEST_CASE("a broken image map is refused with the entry and field named") {
  auto err = [](std::string_view text) {
    auto m = ImageMap::Parse(text, "images.json");
    REQUIRE_FALSE(m.has_value());
    return m.error().message;
  };
  CHECK(err("{") == "images.json: not valid JSON");
  CHECK(err(R"({"images": {}})") == "images.json: 'images' must be an array");
  CHECK(err(R"({"images": [{"command": null}]})") ==
        "images.json: images[0].image: must be a non-empty string");
  CHECK(err(R"({"images": [{"image": "a/b", "command": ["x", 1]}]})")
            .starts_with("images.json: images[0] (a/b).command:"));
  CHECK(err(R"({"images": [{"image": "a/b", "command": ["x", "{port}"]}]})")
            .starts_with("images.json: images[0] (a/b).default_port:"));
  CHECK(err(R"({"images": [{"image": "a/b", "command": null},
                           {"image": "docker.io/a/b:1", "command": null}]})") ==
        "images.json: images[1] (a/b).image: listed twice");
}
