// /docs: Swagger UI from this server's own copy of its files (no CDN). The OpenAPI schema
// needs the API key when one is set, so it is fetched here with the key from session storage
// and handed to Swagger UI, which then sends the key on every "Try it out" request too.
"use strict";

async function start() {
  const box = document.getElementById("error");
  try {
    const resp = await MonolithAuth.authFetch("/openapi.json");
    if (!resp.ok) throw new Error(`/openapi.json: ${resp.status}`);
    const spec = await resp.json();
    document.getElementById("forget-key").hidden = !MonolithAuth.get();
    window.ui = SwaggerUIBundle({
      spec,
      dom_id: "#swagger-ui",
      deepLinking: true,
      layout: "BaseLayout",
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
      showExtensions: true,
      validatorUrl: null,  // the default validator is an outside service
      requestInterceptor: (req) => {
        const key = MonolithAuth.get();
        if (key && !req.headers.Authorization) req.headers.Authorization = "Bearer " + key;
        return req;
      },
    });
    const key = MonolithAuth.get();
    if (key) window.ui.preauthorizeApiKey("HTTPBearer", key);
    document.body.dataset.loaded = "true";
  } catch (err) {
    if (err instanceof MonolithAuth.Unauthorized) {
      MonolithAuth.showForm(document.getElementById("auth"), err.message, start);
      return;
    }
    box.hidden = false;
    box.textContent = String(err.message || err);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("forget-key").addEventListener("click", () => {
    MonolithAuth.clear();
    location.reload();
  });
  start();
});
