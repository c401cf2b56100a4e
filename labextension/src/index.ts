/**
 * JupyterLab side of jupyter_llm_manager: what only the browser can do.
 *
 * - a status bar item with the active kernel's loaded models and memory;
 * - an "LLM models" side panel (Unload / Pin per model, Unload all, Free memory);
 * - commands in the palette and the notebook context menu;
 * - `%%llm` cell bodies highlighted as Markdown, in notebooks and consoles.
 *
 * Policy stays in the kernel's manager: this only shows its snapshots and
 * sends it clicks, through a comm it opens to the kernel (which answers once
 * `%load_ext jupyter_llm_manager` ran there).
 */
import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, Notification } from '@jupyterlab/apputils';
import { EditorExtensionRegistry, IEditorExtensionRegistry, IEditorLanguageRegistry } from '@jupyterlab/codemirror';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';

import { llmCellExtension } from './highlight';
import { LLMModelsPanel, llmIcon } from './panel';
import { IResult, LLMKernelState } from './state';
import { LLMStatusItem } from './statusItem';

namespace CommandIDs {
  export const unloadAll = 'jupyter-llm-manager:unload-all';
  export const freeMemory = 'jupyter-llm-manager:free-memory';
  export const openPanel = 'jupyter-llm-manager:open-panel';
  export const insertCell = 'jupyter-llm-manager:insert-cell';
}

const CATEGORY = 'LLM';

function tell(result: IResult): void {
  if (result.ok) {
    Notification.info(result.message.split('\n')[0] || 'Done', { autoClose: 5000 });
  } else {
    Notification.error(result.message, { autoClose: 10000 });
  }
}

const models: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-llm-manager:models',
  description: 'Status bar item, models panel and commands for the models of the active kernel.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [IStatusBar, ICommandPalette, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    notebooks: INotebookTracker,
    statusBar: IStatusBar | null,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null
  ) => {
    const state = new LLMKernelState(notebooks);
    const panel = new LLMModelsPanel(state);
    app.shell.add(panel, 'right', { rank: 900 });
    restorer?.add(panel, panel.id);

    const loaded = (): boolean => state.snapshot !== null;
    app.commands.addCommand(CommandIDs.unloadAll, {
      label: 'LLM: Unload all models',
      caption: 'Unload every model of this kernel that is not generating',
      isEnabled: loaded,
      execute: async () => tell(await panel.act('unload_all'))
    });
    app.commands.addCommand(CommandIDs.freeMemory, {
      label: 'LLM: Free memory',
      caption: 'Collect garbage and empty the CUDA cache in this kernel; report what still holds models',
      isEnabled: loaded,
      execute: async () => tell(await panel.act('free_memory'))
    });
    app.commands.addCommand(CommandIDs.openPanel, {
      label: 'LLM: Open models panel',
      icon: llmIcon,
      execute: () => app.shell.activateById(panel.id)
    });
    app.commands.addCommand(CommandIDs.insertCell, {
      label: 'LLM: Insert %%llm cell',
      isEnabled: () => notebooks.currentWidget !== null,
      execute: async () => {
        const panel = notebooks.currentWidget;
        if (!panel) {
          return;
        }
        const notebook = panel.content;
        NotebookActions.insertBelow(notebook);
        const cell = notebook.activeCell;
        if (!cell) {
          return;
        }
        cell.model.sharedModel.setSource('%%llm\n');
        app.shell.activateById(panel.id); // from the palette or a menu, focus is elsewhere: bring it back
        await cell.ready;
        const edit = (): void => {
          notebook.mode = 'edit';
          cell.editor?.setCursorPosition({ line: 1, column: 0 }); // the prompt goes on line 2, below the magic
          cell.editor?.focus();
        };
        edit();
        // the palette or the menu closes after this returns and gives the focus back to the notebook, which
        // would leave edit mode: take it once more when that is done
        window.requestAnimationFrame(() => window.setTimeout(edit, 0));
      }
    });
    state.changed.connect(() => app.commands.notifyCommandChanged());

    for (const [rank, command] of [CommandIDs.insertCell, CommandIDs.unloadAll, CommandIDs.freeMemory,
      CommandIDs.openPanel].entries()) {
      palette?.addItem({ command, category: CATEGORY });
      app.contextMenu.addItem({ command, selector: '.jp-Notebook', rank: 100 + rank });
    }

    if (statusBar) {
      const item = new LLMStatusItem(state, () => app.commands.execute(CommandIDs.openPanel));
      statusBar.registerStatusItem('jupyter-llm-manager:status', {
        item,
        align: 'left',
        rank: 4,
        isActive: loaded,
        activeStateChanged: state.changed
      });
    }
  }
};

const highlighting: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-llm-manager:highlighting',
  description: 'Highlights the body of %%llm cells as Markdown.',
  autoStart: true,
  requires: [IEditorExtensionRegistry, IEditorLanguageRegistry],
  activate: (app: JupyterFrontEnd, extensions: IEditorExtensionRegistry, languages: IEditorLanguageRegistry) => {
    const extension = llmCellExtension(languages);
    extensions.addExtension({
      name: 'jupyter-llm-manager:llm-cells',
      factory: () => EditorExtensionRegistry.createImmutableExtension(extension)
    });
  }
};

export default [models, highlighting];
