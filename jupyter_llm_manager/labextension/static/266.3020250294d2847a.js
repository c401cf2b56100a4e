"use strict";(self.rspackChunkjupyter_llm_manager=self.rspackChunkjupyter_llm_manager||[]).push([[266],{"./node_modules/css-loader/dist/cjs.js!./style/index.css"(e,t,o){var n=o("./node_modules/css-loader/dist/runtime/noSourceMaps.js"),r=o.n(n),a=o("./node_modules/css-loader/dist/runtime/api.js"),s=(o.n(a))()(r());s.push([e.id,`/* jupyter_llm_manager: status bar item, models panel, %%llm cells. Colors follow the JupyterLab theme. */

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

.jp-LLMPanel-lost {
  color: var(--jp-warn-color0, var(--jp-ui-font-color1));
  font-size: var(--jp-ui-font-size0);
  margin: 2px 0;
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
`,""]),o.d(t,{},{A:s})},"./node_modules/css-loader/dist/runtime/api.js"(e){e.exports=function(e){var t=[];return t.toString=function(){return this.map(function(t){var o="",n=void 0!==t[5];return t[4]&&(o+="@supports (".concat(t[4],") {")),t[2]&&(o+="@media ".concat(t[2]," {")),n&&(o+="@layer".concat(t[5].length>0?" ".concat(t[5]):""," {")),o+=e(t),n&&(o+="}"),t[2]&&(o+="}"),t[4]&&(o+="}"),o}).join("")},t.i=function(e,o,n,r,a){"string"==typeof e&&(e=[[null,e,void 0]]);var s={};if(n)for(var l=0;l<this.length;l++){var i=this[l][0];null!=i&&(s[i]=!0)}for(var p=0;p<e.length;p++){var d=[].concat(e[p]);n&&s[d[0]]||(void 0!==a&&(void 0===d[5]||(d[1]="@layer".concat(d[5].length>0?" ".concat(d[5]):""," {").concat(d[1],"}")),d[5]=a),o&&(d[2]&&(d[1]="@media ".concat(d[2]," {").concat(d[1],"}")),d[2]=o),r&&(d[4]?(d[1]="@supports (".concat(d[4],") {").concat(d[1],"}"),d[4]=r):d[4]="".concat(r)),t.push(d))}},t}},"./node_modules/css-loader/dist/runtime/noSourceMaps.js"(e){e.exports=function(e){return e[1]}},"./style/index.css"(e,t,o){o.r(t);var n=o("./node_modules/style-loader/dist/runtime/injectStylesIntoStyleTag.js"),r=o.n(n),a=o("./node_modules/style-loader/dist/runtime/styleDomAPI.js"),s=o.n(a),l=o("./node_modules/style-loader/dist/runtime/insertBySelector.js"),i=o.n(l),p=o("./node_modules/style-loader/dist/runtime/setAttributesWithoutAttributes.js"),d=o.n(p),u=o("./node_modules/style-loader/dist/runtime/insertStyleElement.js"),c=o.n(u),m=o("./node_modules/style-loader/dist/runtime/styleTagTransform.js"),f=o.n(m),j=o("./node_modules/css-loader/dist/cjs.js!./style/index.css"),y={};y.styleTagTransform=f(),y.setAttributes=d(),y.insert=i().bind(null,"head"),y.domAPI=s(),y.insertStyleElement=c(),r()(j.A,y);let h=j.A&&j.A.locals?j.A.locals:void 0;o.d(t,{},{default:h})},"./node_modules/style-loader/dist/runtime/injectStylesIntoStyleTag.js"(e){var t=[];function o(e){for(var o=-1,n=0;n<t.length;n++)if(t[n].identifier===e){o=n;break}return o}function n(e,n){for(var r={},a=[],s=0;s<e.length;s++){var l=e[s],i=n.base?l[0]+n.base:l[0],p=r[i]||0,d="".concat(i," ").concat(p);r[i]=p+1;var u=o(d),c={css:l[1],media:l[2],sourceMap:l[3],supports:l[4],layer:l[5]};if(-1!==u)t[u].references++,t[u].updater(c);else{var m=function(e,t){var o=t.domAPI(t);return o.update(e),function(t){t?(t.css!==e.css||t.media!==e.media||t.sourceMap!==e.sourceMap||t.supports!==e.supports||t.layer!==e.layer)&&o.update(e=t):o.remove()}}(c,n);n.byIndex=s,t.splice(s,0,{identifier:d,updater:m,references:1})}a.push(d)}return a}e.exports=function(e,r){var a=n(e=e||[],r=r||{});return function(e){e=e||[];for(var s=0;s<a.length;s++){var l=o(a[s]);t[l].references--}for(var i=n(e,r),p=0;p<a.length;p++){var d=o(a[p]);0===t[d].references&&(t[d].updater(),t.splice(d,1))}a=i}}},"./node_modules/style-loader/dist/runtime/insertBySelector.js"(e){var t={};e.exports=function(e,o){var n=function(e){if(void 0===t[e]){var o=document.querySelector(e);if(window.HTMLIFrameElement&&o instanceof window.HTMLIFrameElement)try{o=o.contentDocument.head}catch(e){o=null}t[e]=o}return t[e]}(e);if(!n)throw Error("Couldn't find a style target. This probably means that the value for the 'insert' parameter is invalid.");n.appendChild(o)}},"./node_modules/style-loader/dist/runtime/insertStyleElement.js"(e){e.exports=function(e){var t=document.createElement("style");return e.setAttributes(t,e.attributes),e.insert(t,e.options),t}},"./node_modules/style-loader/dist/runtime/setAttributesWithoutAttributes.js"(e,t,o){e.exports=function(e){var t=o.nc;t&&e.setAttribute("nonce",t)}},"./node_modules/style-loader/dist/runtime/styleDomAPI.js"(e){e.exports=function(e){if("u"<typeof document)return{update:function(){},remove:function(){}};var t=e.insertStyleElement(e);return{update:function(o){var n,r,a;n="",o.supports&&(n+="@supports (".concat(o.supports,") {")),o.media&&(n+="@media ".concat(o.media," {")),(r=void 0!==o.layer)&&(n+="@layer".concat(o.layer.length>0?" ".concat(o.layer):""," {")),n+=o.css,r&&(n+="}"),o.media&&(n+="}"),o.supports&&(n+="}"),(a=o.sourceMap)&&"u">typeof btoa&&(n+="\n/*# sourceMappingURL=data:application/json;base64,".concat(btoa(unescape(encodeURIComponent(JSON.stringify(a))))," */")),e.styleTagTransform(n,t,e.options)},remove:function(){var e;null===(e=t).parentNode||e.parentNode.removeChild(e)}}}},"./node_modules/style-loader/dist/runtime/styleTagTransform.js"(e){e.exports=function(e,t){if(t.styleSheet)t.styleSheet.cssText=e;else{for(;t.firstChild;)t.removeChild(t.firstChild);t.appendChild(document.createTextNode(e))}}}}]);