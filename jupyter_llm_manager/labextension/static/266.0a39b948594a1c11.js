"use strict";(self.rspackChunkjupyter_llm_manager=self.rspackChunkjupyter_llm_manager||[]).push([[266],{"./node_modules/css-loader/dist/cjs.js!./style/index.css"(e,t,r){var o=r("./node_modules/css-loader/dist/runtime/noSourceMaps.js"),n=r.n(o),a=r("./node_modules/css-loader/dist/runtime/api.js"),s=(r.n(a))()(n());s.push([e.id,`/* jupyter_llm_manager: status bar item, models panel, %%llm cells. Colors follow the JupyterLab theme. */

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

.jp-LLMPanel-button {
  margin: 0 4px 0 0;
  padding: 0 8px;
  min-height: 22px;
  height: 22px;
}

.jp-LLMPanel-actions {
  margin: 6px 0;
}

.jp-LLMPanel-button:disabled {
  opacity: 0.45;
  cursor: default;
}
`,""]),r.d(t,{},{A:s})},"./node_modules/css-loader/dist/runtime/api.js"(e){e.exports=function(e){var t=[];return t.toString=function(){return this.map(function(t){var r="",o=void 0!==t[5];return t[4]&&(r+="@supports (".concat(t[4],") {")),t[2]&&(r+="@media ".concat(t[2]," {")),o&&(r+="@layer".concat(t[5].length>0?" ".concat(t[5]):""," {")),r+=e(t),o&&(r+="}"),t[2]&&(r+="}"),t[4]&&(r+="}"),r}).join("")},t.i=function(e,r,o,n,a){"string"==typeof e&&(e=[[null,e,void 0]]);var s={};if(o)for(var l=0;l<this.length;l++){var i=this[l][0];null!=i&&(s[i]=!0)}for(var d=0;d<e.length;d++){var p=[].concat(e[d]);o&&s[p[0]]||(void 0!==a&&(void 0===p[5]||(p[1]="@layer".concat(p[5].length>0?" ".concat(p[5]):""," {").concat(p[1],"}")),p[5]=a),r&&(p[2]&&(p[1]="@media ".concat(p[2]," {").concat(p[1],"}")),p[2]=r),n&&(p[4]?(p[1]="@supports (".concat(p[4],") {").concat(p[1],"}"),p[4]=n):p[4]="".concat(n)),t.push(p))}},t}},"./node_modules/css-loader/dist/runtime/noSourceMaps.js"(e){e.exports=function(e){return e[1]}},"./style/index.css"(e,t,r){r.r(t);var o=r("./node_modules/style-loader/dist/runtime/injectStylesIntoStyleTag.js"),n=r.n(o),a=r("./node_modules/style-loader/dist/runtime/styleDomAPI.js"),s=r.n(a),l=r("./node_modules/style-loader/dist/runtime/insertBySelector.js"),i=r.n(l),d=r("./node_modules/style-loader/dist/runtime/setAttributesWithoutAttributes.js"),p=r.n(d),c=r("./node_modules/style-loader/dist/runtime/insertStyleElement.js"),u=r.n(c),m=r("./node_modules/style-loader/dist/runtime/styleTagTransform.js"),f=r.n(m),j=r("./node_modules/css-loader/dist/cjs.js!./style/index.css"),y={};y.styleTagTransform=f(),y.setAttributes=p(),y.insert=i().bind(null,"head"),y.domAPI=s(),y.insertStyleElement=u(),n()(j.A,y);let v=j.A&&j.A.locals?j.A.locals:void 0;r.d(t,{},{default:v})},"./node_modules/style-loader/dist/runtime/injectStylesIntoStyleTag.js"(e){var t=[];function r(e){for(var r=-1,o=0;o<t.length;o++)if(t[o].identifier===e){r=o;break}return r}function o(e,o){for(var n={},a=[],s=0;s<e.length;s++){var l=e[s],i=o.base?l[0]+o.base:l[0],d=n[i]||0,p="".concat(i," ").concat(d);n[i]=d+1;var c=r(p),u={css:l[1],media:l[2],sourceMap:l[3],supports:l[4],layer:l[5]};if(-1!==c)t[c].references++,t[c].updater(u);else{var m=function(e,t){var r=t.domAPI(t);return r.update(e),function(t){t?(t.css!==e.css||t.media!==e.media||t.sourceMap!==e.sourceMap||t.supports!==e.supports||t.layer!==e.layer)&&r.update(e=t):r.remove()}}(u,o);o.byIndex=s,t.splice(s,0,{identifier:p,updater:m,references:1})}a.push(p)}return a}e.exports=function(e,n){var a=o(e=e||[],n=n||{});return function(e){e=e||[];for(var s=0;s<a.length;s++){var l=r(a[s]);t[l].references--}for(var i=o(e,n),d=0;d<a.length;d++){var p=r(a[d]);0===t[p].references&&(t[p].updater(),t.splice(p,1))}a=i}}},"./node_modules/style-loader/dist/runtime/insertBySelector.js"(e){var t={};e.exports=function(e,r){var o=function(e){if(void 0===t[e]){var r=document.querySelector(e);if(window.HTMLIFrameElement&&r instanceof window.HTMLIFrameElement)try{r=r.contentDocument.head}catch(e){r=null}t[e]=r}return t[e]}(e);if(!o)throw Error("Couldn't find a style target. This probably means that the value for the 'insert' parameter is invalid.");o.appendChild(r)}},"./node_modules/style-loader/dist/runtime/insertStyleElement.js"(e){e.exports=function(e){var t=document.createElement("style");return e.setAttributes(t,e.attributes),e.insert(t,e.options),t}},"./node_modules/style-loader/dist/runtime/setAttributesWithoutAttributes.js"(e,t,r){e.exports=function(e){var t=r.nc;t&&e.setAttribute("nonce",t)}},"./node_modules/style-loader/dist/runtime/styleDomAPI.js"(e){e.exports=function(e){if("u"<typeof document)return{update:function(){},remove:function(){}};var t=e.insertStyleElement(e);return{update:function(r){var o,n,a;o="",r.supports&&(o+="@supports (".concat(r.supports,") {")),r.media&&(o+="@media ".concat(r.media," {")),(n=void 0!==r.layer)&&(o+="@layer".concat(r.layer.length>0?" ".concat(r.layer):""," {")),o+=r.css,n&&(o+="}"),r.media&&(o+="}"),r.supports&&(o+="}"),(a=r.sourceMap)&&"u">typeof btoa&&(o+="\n/*# sourceMappingURL=data:application/json;base64,".concat(btoa(unescape(encodeURIComponent(JSON.stringify(a))))," */")),e.styleTagTransform(o,t,e.options)},remove:function(){var e;null===(e=t).parentNode||e.parentNode.removeChild(e)}}}},"./node_modules/style-loader/dist/runtime/styleTagTransform.js"(e){e.exports=function(e,t){if(t.styleSheet)t.styleSheet.cssText=e;else{for(;t.firstChild;)t.removeChild(t.firstChild);t.appendChild(document.createTextNode(e))}}}}]);