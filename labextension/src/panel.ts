/**
 * The "LLM models" side panel: the active kernel's models with Unload / Pin,
 * Unload all and Free memory. It renders snapshots the kernel pushes; the only
 * timer re-renders relative times ("12s ago") locally.
 */
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { IModelRow, IResult, LLMKernelState } from './state';

const ICON_SVG =
  '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">' +
  '<g class="jp-icon3" fill="#616161"><path d="M9 3h6v2h2a2 2 0 0 1 2 2v2h2v6h-2v2a2 2 0 0 1-2 2h-2v2H9v-2H7a2 ' +
  '2 0 0 1-2-2v-2H3V9h2V7a2 2 0 0 1 2-2h2V3zm-2 4v10h10V7H7zm2 2h6v6H9V9z"/></g></svg>';

export const llmIcon = new LabIcon({ name: 'jupyter-llm-manager:chip', svgstr: ICON_SVG });

const RERENDER_MS = 10_000;

export class LLMModelsPanel extends Widget {
  constructor(private readonly _state: LLMKernelState) {
    super();
    this.id = 'jupyter-llm-manager-panel';
    this.addClass('jp-LLMPanel');
    this.title.icon = llmIcon;
    this.title.caption = 'LLM models';
    this.title.label = '';
    _state.changed.connect(this.render, this);
    this._timer = window.setInterval(() => this.render(), RERENDER_MS);
    this.render();
  }

  dispose(): void {
    window.clearInterval(this._timer);
    this._state.changed.disconnect(this.render, this);
    super.dispose();
  }

  /** Send an action to the kernel; show it pending, then its answer. */
  async act(action: string, model?: string): Promise<IResult> {
    this._pending.set(model ?? '', action);
    this.render();
    const result = await this._state.send(action, model);
    this._pending.delete(model ?? '');
    this._message = result;
    this.render();
    return result;
  }

  render(): void {
    const snapshot = this._state.snapshot;
    if (!snapshot) {
      this._message = null; // an answer from a kernel that is gone (restarted, extension unloaded)
    }
    const body = document.createElement('div');
    body.append(element('h2', 'LLM models', 'jp-LLMPanel-title'));
    const notebook = this._state.notebookName;
    body.append(element('div', notebook ? `Kernel of ${notebook}` : 'No notebook is open.', 'jp-LLMPanel-kernel'));
    if (!snapshot) {
      if (notebook) {
        const help = element('div', 'The LLM manager is not loaded in this kernel. Run this in a cell:', 'jp-LLMPanel-empty');
        help.append(element('pre', '%load_ext jupyter_llm_manager'));
        body.append(help);
      }
    } else {
      body.append(this._list(snapshot.models));
      const actions = element('div', '', 'jp-LLMPanel-actions');
      actions.append(
        this._button('Unload all', () => this.act('unload_all'), !snapshot.loaded || this._pending.has('')),
        this._button('Free memory', () => this.act('free_memory'), this._pending.has(''))
      );
      body.append(actions);
      for (const device of snapshot.devices) {
        const line = element('div', `${device.device}: ${device.held} reserved for models · ${device.free} free ` +
          `of ${device.total} · budget ${device.budget}`, 'jp-LLMPanel-device');
        line.title = RESERVED_HELP;
        body.append(line);
      }
    }
    if (this._message) {
      body.append(element('pre', this._message.message, this._message.ok ? 'jp-LLMPanel-message' : 'jp-LLMPanel-error'));
    }
    this.node.replaceChildren(body);
  }

  /** One card per model: name and state, then device, memory and last use, then its buttons. */
  private _list(models: IModelRow[]): HTMLElement {
    const list = element('div', '', 'jp-LLMPanel-list');
    const now = Date.now() / 1000;
    for (const model of models) {
      const card = element('div', '', `jp-LLMPanel-row jp-mod-${model.state}`);
      card.dataset.model = model.id;
      const head = element('div', '', 'jp-LLMPanel-head');
      const name = element('span', model.id, 'jp-LLMPanel-id');
      if (model.aliases.length) {
        name.append(element('span', ` (${model.aliases.join(', ')})`, 'jp-LLMPanel-alias'));
      }
      if (model.trust_remote_code) {
        name.append(element('span', ' ⚠ remote code', 'jp-LLMPanel-warning'));
      }
      const pending = this._pending.get(model.id);
      const state = element('span', pending ? `${pending}…` : stateText(model), 'jp-LLMPanel-state');
      state.title = model.error ?? model.waiting_for ?? '';
      head.append(name, state);
      const memory = model.remote ? 'remote' : [model.actual && `weights ${model.actual}`,
        model.estimated && `needs ${model.estimated}`].filter(Boolean).join(' · ');
      const used = model.last_used ? `used ${ago(now - model.last_used)} ago` : '';
      const left = model.expires_at ? `unloads in ${ago(model.expires_at - now)}` : '';
      const facts = element('div', [model.device, memory, used, left].filter(Boolean).join(' · '),
        'jp-LLMPanel-facts');
      facts.title = SIZES_HELP;
      const buttons = element('div', '', 'jp-LLMPanel-buttons');
      buttons.append(
        this._button('Unload', () => this.act('unload', model.id), model.state !== 'loaded' || !!pending),
        this._button(model.pinned ? 'Unpin' : 'Pin', () => this.act(model.pinned ? 'unpin' : 'pin', model.id),
          !!pending)
      );
      card.append(head, facts, buttons);
      if (model.error && (model.state === 'failed' || model.reachable === false)) {
        card.append(element('div', model.error, 'jp-LLMPanel-error'));
      }
      list.append(card);
    }
    return list;
  }

  private _button(label: string, onClick: () => void, disabled: boolean): HTMLButtonElement {
    const button = document.createElement('button');
    button.className = 'jp-Button jp-mod-styled jp-mod-reject jp-LLMPanel-button';
    button.textContent = label;
    button.disabled = disabled;
    button.addEventListener('click', onClick);
    return button;
  }

  private _pending = new Map<string, string>();
  private _message: IResult | null = null;
  private _timer: number;
}

const SIZES_HELP = 'weights: measured after the load; needs: the estimate from metadata, weights plus the ' +
  'KV cache and overhead it takes to generate';
const RESERVED_HELP = 'reserved: what this kernel counts against the budget for its loaded models: their ' +
  'measured weights plus the KV cache and overhead of their estimates';

function stateText(model: IModelRow): string {
  const notes = [model.in_use ? `in use (${model.in_use})` : '', model.pinned ? 'pinned' : '',
    model.reachable === false ? 'unreachable' : ''].filter(Boolean);
  return notes.length ? `${model.state} · ${notes.join(', ')}` : model.state;
}

function element(tag: string, text: string, className?: string): HTMLElement {
  const node = document.createElement(tag);
  node.textContent = text;
  if (className) {
    node.className = className;
  }
  return node;
}

function ago(seconds: number): string {
  if (seconds < 60) {
    return `${Math.max(0, Math.round(seconds))}s`;
  }
  if (seconds < 3600) {
    return `${Math.floor(seconds / 60)}m`;
  }
  return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m`;
}
