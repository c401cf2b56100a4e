"use strict";(self.rspackChunkjupyter_llm_manager=self.rspackChunkjupyter_llm_manager||[]).push([[266],{"./node_modules/css-loader/dist/cjs.js!./style/index.css"(e,t,o){var r=o("./node_modules/css-loader/dist/runtime/noSourceMaps.js"),n=o.n(r),a=o("./node_modules/css-loader/dist/runtime/api.js"),s=(o.n(a))()(n());s.push([e.id,`/* jupyter_llm_manager: status bar item, models panel, %%llm cells. Colors follow the JupyterLab theme. */

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
`,""]),o.d(t,{},{A:s})},"./node_modules/css-loader/dist/runtime/api.js"(e){e.exports=function(e){var t=[];return t.toString=function(){return this.map(function(t){var o="",r=void 0!==t[5];return t[4]&&(o+="@supports (".concat(t[4],") {")),t[2]&&(o+="@media ".concat(t[2]," {")),r&&(o+="@layer".concat(t[5].length>0?" ".concat(t[5]):""," {")),o+=e(t),r&&(o+="}"),t[2]&&(o+="}"),t[4]&&(o+="}"),o}).join("")},t.i=function(e,o,r,n,a){"string"==typeof e&&(e=[[null,e,void 0]]);var s={};if(r)for(var l=0;l<this.length;l++){var i=this[l][0];null!=i&&(s[i]=!0)}for(var d=0;d<e.length;d++){var p=[].concat(e[d]);r&&s[p[0]]||(void 0!==a&&(void 0===p[5]||(p[1]="@layer".concat(p[5].length>0?" ".concat(p[5]):""," {").concat(p[1],"}")),p[5]=a),o&&(p[2]&&(p[1]="@media ".concat(p[2]," {").concat(p[1],"}")),p[2]=o),n&&(p[4]?(p[1]="@supports (".concat(p[4],") {").concat(p[1],"}"),p[4]=n):p[4]="".concat(n)),t.push(p))}},t}},"./node_modules/css-loader/dist/runtime/noSourceMaps.js"(e){e.exports=function(e){return e[1]}},"./style/index.css"(e,t,o){o.r(t);var r=o("./node_modules/style-loader/dist/runtime/injectStylesIntoStyleTag.js"),n=o.n(r),a=o("./node_modules/style-loader/dist/runtime/styleDomAPI.js"),s=o.n(a),l=o("./node_modules/style-loader/dist/runtime/insertBySelector.js"),i=o.n(l),d=o("./node_modules/style-loader/dist/runtime/setAttributesWithoutAttributes.js"),p=o.n(d),u=o("./node_modules/style-loader/dist/runtime/insertStyleElement.js"),c=o.n(u),m=o("./node_modules/style-loader/dist/runtime/styleTagTransform.js"),f=o.n(m),j=o("./node_modules/css-loader/dist/cjs.js!./style/index.css"),y={};y.styleTagTransform=f(),y.setAttributes=p(),y.insert=i().bind(null,"head"),y.domAPI=s(),y.insertStyleElement=c(),n()(j.A,y);let h=j.A&&j.A.locals?j.A.locals:void 0;o.d(t,{},{default:h})},"./node_modules/style-loader/dist/runtime/injectStylesIntoStyleTag.js"(e){var t=[];function o(e){for(var o=-1,r=0;r<t.length;r++)if(t[r].identifier===e){o=r;break}return o}function r(e,r){for(var n={},a=[],s=0;s<e.length;s++){var l=e[s],i=r.base?l[0]+r.base:l[0],d=n[i]||0,p="".concat(i," ").concat(d);n[i]=d+1;var u=o(p),c={css:l[1],media:l[2],sourceMap:l[3],supports:l[4],layer:l[5]};if(-1!==u)t[u].references++,t[u].updater(c);else{var m=function(e,t){var o=t.domAPI(t);return o.update(e),function(t){t?(t.css!==e.css||t.media!==e.media||t.sourceMap!==e.sourceMap||t.supports!==e.supports||t.layer!==e.layer)&&o.update(e=t):o.remove()}}(c,r);r.byIndex=s,t.splice(s,0,{identifier:p,updater:m,references:1})}a.push(p)}return a}e.exports=function(e,n){var a=r(e=e||[],n=n||{});return function(e){e=e||[];for(var s=0;s<a.length;s++){var l=o(a[s]);t[l].references--}for(var i=r(e,n),d=0;d<a.length;d++){var p=o(a[d]);0===t[p].references&&(t[p].updater(),t.splice(p,1))}a=i}}},"./node_modules/style-loader/dist/runtime/insertBySelector.js"(e){var t={};e.exports=function(e,o){var r=function(e){if(void 0===t[e]){var o=document.querySelector(e);if(window.HTMLIFrameElement&&o instanceof window.HTMLIFrameElement)try{o=o.contentDocument.head}catch(e){o=null}t[e]=o}return t[e]}(e);if(!r)throw Error("Couldn't find a style target. This probably means that the value for the 'insert' parameter is invalid.");r.appendChild(o)}},"./node_modules/style-loader/dist/runtime/insertStyleElement.js"(e){e.exports=function(e){var t=document.createElement("style");return e.setAttributes(t,e.attributes),e.insert(t,e.options),t}},"./node_modules/style-loader/dist/runtime/setAttributesWithoutAttributes.js"(e,t,o){e.exports=function(e){var t=o.nc;t&&e.setAttribute("nonce",t)}},"./node_modules/style-loader/dist/runtime/styleDomAPI.js"(e){e.exports=function(e){if("u"<typeof document)return{update:function(){},remove:function(){}};var t=e.insertStyleElement(e);return{update:function(o){var r,n,a;r="",o.supports&&(r+="@supports (".concat(o.supports,") {")),o.media&&(r+="@media ".concat(o.media," {")),(n=void 0!==o.layer)&&(r+="@layer".concat(o.layer.length>0?" ".concat(o.layer):""," {")),r+=o.css,n&&(r+="}"),o.media&&(r+="}"),o.supports&&(r+="}"),(a=o.sourceMap)&&"u">typeof btoa&&(r+="\n/*# sourceMappingURL=data:application/json;base64,".concat(btoa(unescape(encodeURIComponent(JSON.stringify(a))))," */")),e.styleTagTransform(r,t,e.options)},remove:function(){var e;null===(e=t).parentNode||e.parentNode.removeChild(e)}}}},"./node_modules/style-loader/dist/runtime/styleTagTransform.js"(e){e.exports=function(e,t){if(t.styleSheet)t.styleSheet.cssText=e;else{for(;t.firstChild;)t.removeChild(t.firstChild);t.appendChild(document.createTextNode(e))}}}}]);