/**
 * `%%llm` cells read like prompts: the body is highlighted as Markdown while
 * the first line (the magic and its options) stays Python.
 *
 * A compartment in every editor holds nothing for ordinary cells; when the
 * text starts with `%%llm` it holds, at the highest precedence, a language
 * whose parser is JupyterLab's own Markdown parser with its Python parser
 * overlaid on the first line. Works wherever JupyterLab's CodeMirror editors
 * do: notebook cells and console prompts.
 */
import { IEditorLanguageRegistry } from '@jupyterlab/codemirror';
import { Language, LanguageSupport } from '@codemirror/language';
import { Compartment, EditorState, Extension, Prec, Text } from '@codemirror/state';
import { EditorView, ViewPlugin } from '@codemirror/view';
import { Input, Parser, parseMixed } from '@lezer/common';

const MAGIC = '%%llm';
export const LLM_CELL_CLASS = 'jp-LLMCell';

/** Whether a cell's text is a `%%llm` cell. */
export function isLLMCell(doc: Text): boolean {
  return doc.lines > 0 && doc.line(1).text.startsWith(MAGIC);
}

function firstLineEnd(input: Input): number {
  const head = input.read(0, Math.min(input.length, 4096));
  const newline = head.indexOf('\n');
  return newline < 0 ? input.length : newline;
}

/** Markdown for the whole cell, with Python over its first line. */
export function llmCellLanguage(markdown: LanguageSupport, python: LanguageSupport): LanguageSupport {
  const markdownParser = markdown.language.parser as Parser & { configure(spec: object): Parser };
  const parser = markdownParser.configure({
    wrap: parseMixed((node, input) =>
      node.type.isTop
        ? { parser: python.language.parser, overlay: [{ from: 0, to: firstLineEnd(input) }] }
        : null
    )
  });
  return new LanguageSupport(new Language(markdown.language.data, parser, [], 'ipython-llm'));
}

/** The editor extension: switches a cell to the `%%llm` language and back as its first line changes. */
export function llmCellExtension(languages: IEditorLanguageRegistry): Extension {
  const compartment = new Compartment();
  let support: LanguageSupport | null = null;
  const ready = Promise.all([languages.getLanguage('markdown'), languages.getLanguage('python')]).then(
    ([markdown, python]) => {
      if (markdown?.support && python?.support) {
        support = llmCellLanguage(markdown.support, python.support);
      }
    }
  );
  const contents = (on: boolean): Extension =>
    on && support
      ? [Prec.highest(support), EditorView.editorAttributes.of({ class: LLM_CELL_CLASS })]
      : [];
  return [
    compartment.of([]),
    EditorState.transactionExtender.of(transaction => {
      if (!transaction.docChanged || !support) {
        return null;
      }
      const was = isLLMCell(transaction.startState.doc);
      const now = isLLMCell(transaction.newDoc);
      return was === now ? null : { effects: compartment.reconfigure(contents(now)) };
    }),
    ViewPlugin.define(view => {
      let alive = true;
      void ready.then(() => {
        if (alive && isLLMCell(view.state.doc)) {
          view.dispatch({ effects: compartment.reconfigure(contents(true)) });
        }
      });
      return { destroy: () => (alive = false) };
    })
  ];
}
