// A node:test reporter that adds up the top-level tests' time per test file and writes the files slowest first, so
// the suite's time (CI must stay well under 45 minutes) can be watched and the slowest files found.
export default async function* fileTimes(source) {
  const msByFile = new Map();
  for await (const event of source) {
    if ((event.type === 'test:pass' || event.type === 'test:fail') && event.data.nesting === 0) {
      const file = event.data.file ?? '(unknown file)';
      msByFile.set(file, (msByFile.get(file) ?? 0) + (event.data.details?.duration_ms ?? 0));
    }
  }
  const total = [...msByFile.values()].reduce((a, b) => a + b, 0);
  yield `${(total / 1000).toFixed(1).padStart(8)} s  all ${msByFile.size} files\n`;
  for (const [file, ms] of [...msByFile].sort((a, b) => b[1] - a[1])) {
    yield `${(ms / 1000).toFixed(1).padStart(8)} s  ${file.replace(`${process.cwd()}/`, '')}\n`;
  }
}
