// Bundles entry.js into ../vendor/vendor.js (one minified IIFE) and copies
// uPlot's stylesheet to ../vendor/vendor.css. Run by build.sh.
import { build } from "esbuild";
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";

const pkg = (name) => JSON.parse(readFileSync(`node_modules/${name}/package.json`, "utf8"));
const bundled = ["@codemirror/state", "@codemirror/view", "@codemirror/commands", "@codemirror/language",
  "@codemirror/lang-sql", "@codemirror/lint", "@codemirror/autocomplete", "@lezer/common",
  "@lezer/lr", "@lezer/highlight", "style-mod", "w3c-keyname", "crelt", "@marijn/find-cluster-break", "uplot"];
const versions = Object.fromEntries(bundled.map((n) => [n, pkg(n).version]));

// style-mod (CodeMirror's CSS-in-JS) puts its rules in a <style> element
// when the root is a document, and the server's CSP (style-src 'self', no
// inline style) refuses that. A constructed sheet in adoptedStyleSheets is
// not inline style and is allowed, so the document gets one too, as a
// shadow root already does. The build fails if the line has changed.
const STYLE_MOD_FROM = "if (!root.head && root.adoptedStyleSheets && win.CSSStyleSheet) {";
const STYLE_MOD_TO = "if (root.adoptedStyleSheets && win.CSSStyleSheet) {";
const adoptedSheets = {
  name: "style-mod-adopted-sheets",
  setup(b) {
    b.onLoad({ filter: /style-mod[\\/]src[\\/]style-mod\.js$/ }, (args) => {
      const src = readFileSync(args.path, "utf8");
      if (src.split(STYLE_MOD_FROM).length !== 2) {
        throw new Error(`style-mod ${versions["style-mod"]}: the line to patch was not found in ${args.path}`);
      }
      return { contents: src.replace(STYLE_MOD_FROM, STYLE_MOD_TO), loader: "js" };
    });
  }
};

mkdirSync("../vendor", { recursive: true });
// MIT asks for each copyright notice to travel with the code.
writeFileSync("../vendor/LICENSES.txt", bundled.map((n) =>
  `${n} ${versions[n]}\n${"=".repeat(n.length + versions[n].length + 1)}\n\n` +
  readFileSync(`node_modules/${n}/LICENSE`, "utf8").trim() + "\n").join("\n"));
const banner = `/* wardwatch web UI vendor bundle, built by web/vendor-src/build.sh: ${
  bundled.map((n) => n + " " + versions[n]).join(", ")}. All MIT licensed; notices in LICENSES.txt. */`;
const result = await build({
  entryPoints: ["entry.js"],
  bundle: true,
  minify: true,
  format: "iife",
  target: ["chrome100", "firefox100", "safari16"],
  legalComments: "eof",
  banner: { js: banner },
  define: { __VERSIONS__: JSON.stringify(versions) },
  // style-mod's package.json points "module" at src/; keep it explicit.
  mainFields: ["module", "main"],
  plugins: [adoptedSheets],
  outfile: "../vendor/vendor.js",
  metafile: true,
  logLevel: "warning"
});
const css = readFileSync("node_modules/uplot/dist/uPlot.min.css", "utf8");
writeFileSync("../vendor/vendor.css", `/* uPlot ${versions.uplot} (MIT): dist/uPlot.min.css */\n${css}\n`);
const bytes = result.metafile.outputs["../vendor/vendor.js"].bytes;
console.log(`vendor.js ${bytes} bytes; ${Object.entries(versions).map(([n, v]) => n + "@" + v).join(" ")}`);
