// What web/app.js uses of CodeMirror 6 and uPlot, as one global:
// window.WardwatchVendor. Bundled by build.sh into ../vendor/vendor.js.
import { EditorState, StateField, StateEffect, RangeSet } from "@codemirror/state";
import {
  EditorView, keymap, lineNumbers, highlightActiveLine, highlightActiveLineGutter,
  drawSelection, placeholder, Decoration, WidgetType
} from "@codemirror/view";
import { defaultKeymap, history, historyKeymap } from "@codemirror/commands";
import {
  syntaxHighlighting, defaultHighlightStyle, bracketMatching, indentOnInput
} from "@codemirror/language";
import { sql, StandardSQL, PostgreSQL } from "@codemirror/lang-sql";
import { lintGutter, setDiagnostics, lintKeymap, openLintPanel, forEachDiagnostic } from "@codemirror/lint";
import { autocompletion, completionKeymap, closeBrackets, closeBracketsKeymap } from "@codemirror/autocomplete";
import uPlot from "uplot";

window.WardwatchVendor = Object.freeze({
  EditorState, StateField, StateEffect, RangeSet,
  EditorView, keymap, lineNumbers, highlightActiveLine, highlightActiveLineGutter,
  drawSelection, placeholder, Decoration, WidgetType,
  defaultKeymap, history, historyKeymap,
  syntaxHighlighting, defaultHighlightStyle, bracketMatching, indentOnInput,
  sql, StandardSQL, PostgreSQL,
  lintGutter, setDiagnostics, lintKeymap, openLintPanel, forEachDiagnostic,
  autocompletion, completionKeymap, closeBrackets, closeBracketsKeymap,
  uPlot,
  versions: Object.freeze(__VERSIONS__)
});
