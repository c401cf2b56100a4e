// Extra build settings, merged by @jupyter/builder (jupyterlab.webpackConfig in package.json).
// Named module ids come from paths relative to this folder, so the build is the same wherever the
// repository is checked out: CI rebuilds it and fails when the committed output differs.
module.exports = {
  optimization: {
    moduleIds: 'named'
  }
};
