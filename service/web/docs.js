// /docs: Swagger UI renders the contract this service ships, from files
// served by the service itself.
"use strict";

window.addEventListener("DOMContentLoaded", () => {
  window.SwaggerUIBundle({
    url: "/openapi.yaml",
    dom_id: "#api-docs",
    deepLinking: true,
    // The online validator's badge would call another host.
    validatorUrl: null,
    // Calls from here would go to the document's example server, which is
    // rarely this one; the page at / and curl make real calls.
    supportedSubmitMethods: [],
    defaultModelsExpandDepth: 0,
  });
});
