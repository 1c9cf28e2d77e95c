// Starts Swagger UI (vendored in ./swagger-ui/) on this server's own /openapi.json. A file rather
// than an inline script: the Content-Security-Policy lets pages run only this server's files.
"use strict";
(function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.schema,
    dom_id: "#swagger-ui",
    deepLinking: true,
    // Never ask swagger.io to validate the schema: nothing leaves this server's origin.
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    docExpansion: "list",
    defaultModelsExpandDepth: 0,
    displayRequestDuration: true,
    filter: true,
    tryItOutEnabled: false,
  });
})();
