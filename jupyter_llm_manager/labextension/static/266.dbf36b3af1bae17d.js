"use strict";(self.rspackChunkjupyter_llm_manager=self.rspackChunkjupyter_llm_manager||[]).push([[266],{"./node_modules/css-loader/dist/cjs.js!./style/index.css"(e,t,n){var o=n("./node_modules/css-loader/dist/runtime/noSourceMaps.js"),r=n.n(o),a=n("./node_modules/css-loader/dist/runtime/api.js"),s=(n.n(a))()(r());s.push([e.id,`/* jupyter_llm_manager: status bar item, models panel, %%llm cells. Colors follow the JupyterLab theme. */

.jp-LLMStatusItem {
  cursor: pointer;
  padding: 0 6px;
  line-height: 24px;
  font-size: var(--jp-ui-font-size1);
  color: var(--jp-ui-font-color1);
}

.jp-LLMPanel {
  background: var(--jp-layout-color1);
  color: var(--jp-ui-font-color1);
  font-size: var(--jp-ui-font-size1);
  padding: 8px 12px;
  overflow: auto;
  min-width: 320px;
}

.jp-LLMPanel-title {
  font-size: var(--jp-ui-font-size2);
  margin: 4px 0;
}

.jp-LLMPanel-kernel,
.jp-LLMPanel-device,
.jp-LLMPanel-base,
.jp-LLMPanel-alias {
  color: var(--jp-ui-font-color2);
}

.jp-LLMPanel-empty pre,
.jp-LLMPanel-message,
.jp-LLMPanel-error {
  white-space: pre-wrap;
  font-family: var(--jp-code-font-family);
  font-size: var(--jp-code-font-size);
  padding: 4px;
  background: var(--jp-layout-color2);
}

.jp-LLMPanel-error,
.jp-LLMPanel-warning,
.jp-LLMPanel-row.jp-mod-failed .jp-LLMPanel-state {
  color: var(--jp-error-color1);
}

.jp-LLMPanel-row {
  border-top: 1px solid var(--jp-border-color2);
  padding: 6px 0;
}

.jp-LLMPanel-head {
  display: flex;
  flex-wrap: wrap;
  justify-content: space-between;
  gap: 0 8px;
}

/* words stay whole: only an id longer than the panel breaks */
.jp-LLMPanel-id {
  font-weight: 600;
  overflow-wrap: break-word;
  min-width: 0;
}

.jp-LLMPanel-state {
  white-space: nowrap;
}

.jp-LLMPanel-row.jp-mod-loaded .jp-LLMPanel-state {
  color: var(--jp-success-color1);
}

.jp-LLMPanel-facts {
  color: var(--jp-ui-font-color2);
  margin: 2px 0 4px;
  overflow-wrap: break-word;
}

.jp-LLMPanel-pending {
  color: var(--jp-ui-font-color2);
  font-style: italic;
  margin: 2px 0;
}

/* a label that grows ("Free memory \xb7 runs when the cell finishes") wraps inside its button;
   the panel's own selector outweighs JupyterLab's fixed-height button.jp-mod-styled */
.jp-LLMPanel button.jp-LLMPanel-button {
  margin: 0 4px 2px 0;
  padding: 2px 8px;
  min-height: 22px;
  height: auto;
  max-width: 100%;
  white-space: normal;
  line-height: 18px;
}

.jp-LLMPanel-actions {
  margin: 6px 0;
}

.jp-LLMPanel-button:disabled {
  opacity: 0.45;
  cursor: default;
}

.jp-LLMPanel-base {
  font-weight: normal;
  font-size: smaller;
}

.jp-LLMPanel-subtitle {
  font-size: var(--jp-ui-font-size1);
  margin: 10px 0 4px;
}
`,""]),n.d(t,{},{A:s})},"./node_modules/css-loader/dist/runtime/api.js"(e){e.exports=function(e){var t=[];return t.toString=function(){return this.map(function(t){var n="",o=void 0!==t[5];return t[4]&&(n+="@supports (".concat(t[4],") {")),t[2]&&(n+="@media ".concat(t[2]," {")),o&&(n+="@layer".concat(t[5].length>0?" ".concat(t[5]):""," {")),n+=e(t),o&&(n+="}"),t[2]&&(n+="}"),t[4]&&(n+="}"),n}).join("")},t.i=function(e,n,o,r,a){"string"==typeof e&&(e=[[null,e,void 0]]);var s={};if(o)for(var l=0;l<this.length;l++){var i=this[l][0];null!=i&&(s[i]=!0)}for(var d=0;d<e.length;d++){var p=[].concat(e[d]);o&&s[p[0]]||(void 0!==a&&(void 0===p[5]||(p[1]="@layer".concat(p[5].length>0?" ".concat(p[5]):""," {").concat(p[1],"}")),p[5]=a),n&&(p[2]&&(p[1]="@media ".concat(p[2]," {").concat(p[1],"}")),p[2]=n),r&&(p[4]?(p[1]="@supports (".concat(p[4],") {").concat(p[1],"}"),p[4]=r):p[4]="".concat(r)),t.push(p))}},t}},"./node_modules/css-loader/dist/runtime/noSourceMaps.js"(e){e.exports=function(e){return e[1]}},"./style/index.css"(e,t,n){n.r(t);var o=n("./node_modules/style-loader/dist/runtime/injectStylesIntoStyleTag.js"),r=n.n(o),a=n("./node_modules/style-loader/dist/runtime/styleDomAPI.js"),s=n.n(a),l=n("./node_modules/style-loader/dist/runtime/insertBySelector.js"),i=n.n(l),d=n("./node_modules/style-loader/dist/runtime/setAttributesWithoutAttributes.js"),p=n.n(d),u=n("./node_modules/style-loader/dist/runtime/insertStyleElement.js"),c=n.n(u),m=n("./node_modules/style-loader/dist/runtime/styleTagTransform.js"),f=n.n(m),j=n("./node_modules/css-loader/dist/cjs.js!./style/index.css"),y={};y.styleTagTransform=f(),y.setAttributes=p(),y.insert=i().bind(null,"head"),y.domAPI=s(),y.insertStyleElement=c(),r()(j.A,y);let h=j.A&&j.A.locals?j.A.locals:void 0;n.d(t,{},{default:h})},"./node_modules/style-loader/dist/runtime/injectStylesIntoStyleTag.js"(e){var t=[];function n(e){for(var n=-1,o=0;o<t.length;o++)if(t[o].identifier===e){n=o;break}return n}function o(e,o){for(var r={},a=[],s=0;s<e.length;s++){var l=e[s],i=o.base?l[0]+o.base:l[0],d=r[i]||0,p="".concat(i," ").concat(d);r[i]=d+1;var u=n(p),c={css:l[1],media:l[2],sourceMap:l[3],supports:l[4],layer:l[5]};if(-1!==u)t[u].references++,t[u].updater(c);else{var m=function(e,t){var n=t.domAPI(t);return n.update(e),function(t){t?(t.css!==e.css||t.media!==e.media||t.sourceMap!==e.sourceMap||t.supports!==e.supports||t.layer!==e.layer)&&n.update(e=t):n.remove()}}(c,o);o.byIndex=s,t.splice(s,0,{identifier:p,updater:m,references:1})}a.push(p)}return a}e.exports=function(e,r){var a=o(e=e||[],r=r||{});return function(e){e=e||[];for(var s=0;s<a.length;s++){var l=n(a[s]);t[l].references--}for(var i=o(e,r),d=0;d<a.length;d++){var p=n(a[d]);0===t[p].references&&(t[p].updater(),t.splice(p,1))}a=i}}},"./node_modules/style-loader/dist/runtime/insertBySelector.js"(e){var t={};e.exports=function(e,n){var o=function(e){if(void 0===t[e]){var n=document.querySelector(e);if(window.HTMLIFrameElement&&n instanceof window.HTMLIFrameElement)try{n=n.contentDocument.head}catch(e){n=null}t[e]=n}return t[e]}(e);if(!o)throw Error("Couldn't find a style target. This probably means that the value for the 'insert' parameter is invalid.");o.appendChild(n)}},"./node_modules/style-loader/dist/runtime/insertStyleElement.js"(e){e.exports=function(e){var t=document.createElement("style");return e.setAttributes(t,e.attributes),e.insert(t,e.options),t}},"./node_modules/style-loader/dist/runtime/setAttributesWithoutAttributes.js"(e,t,n){e.exports=function(e){var t=n.nc;t&&e.setAttribute("nonce",t)}},"./node_modules/style-loader/dist/runtime/styleDomAPI.js"(e){e.exports=function(e){if("u"<typeof document)return{update:function(){},remove:function(){}};var t=e.insertStyleElement(e);return{update:function(n){var o,r,a;o="",n.supports&&(o+="@supports (".concat(n.supports,") {")),n.media&&(o+="@media ".concat(n.media," {")),(r=void 0!==n.layer)&&(o+="@layer".concat(n.layer.length>0?" ".concat(n.layer):""," {")),o+=n.css,r&&(o+="}"),n.media&&(o+="}"),n.supports&&(o+="}"),(a=n.sourceMap)&&"u">typeof btoa&&(o+="\n/*# sourceMappingURL=data:application/json;base64,".concat(btoa(unescape(encodeURIComponent(JSON.stringify(a))))," */")),e.styleTagTransform(o,t,e.options)},remove:function(){var e;null===(e=t).parentNode||e.parentNode.removeChild(e)}}}},"./node_modules/style-loader/dist/runtime/styleTagTransform.js"(e){e.exports=function(e,t){if(t.styleSheet)t.styleSheet.cssText=e;else{for(;t.firstChild;)t.removeChild(t.firstChild);t.appendChild(document.createTextNode(e))}}}}]);