/**
 * The status bar item: `LLM 2 · 13.2 GB` for the active notebook's kernel,
 * hidden where the extension is not loaded in it.
 */
import { Widget } from '@lumino/widgets';

import { LLMKernelState } from './state';

export class LLMStatusItem extends Widget {
  constructor(private readonly _state: LLMKernelState, onClick: () => void) {
    super();
    this.addClass('jp-LLMStatusItem');
    this.node.title = 'Models loaded in this kernel and their measured weights (click to open the models panel)';
    this.node.addEventListener('click', onClick);
    _state.changed.connect(this._render, this);
    this._render();
  }

  dispose(): void {
    this._state.changed.disconnect(this._render, this);
    super.dispose();
  }

  private _render(): void {
    const snapshot = this._state.snapshot;
    this.node.textContent = snapshot ? `LLM ${snapshot.loaded} · ${snapshot.held_str}` : '';
    this.node.title = snapshot
      ? `${snapshot.loaded} model(s) loaded in this kernel: weights ${snapshot.held_str} measured, ` +
        `${snapshot.reserved_str} reserved with their KV cache and overhead (click for the models panel)`
      : 'Models loaded in this kernel (click to open the models panel)';
  }
}
