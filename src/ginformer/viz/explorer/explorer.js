// The attention explorer's viewer: plain JavaScript, no library, inlined into the page by ginformer.viz.explorer.
// Convention everywhere: A[i][j] is the weight of the edge from token j (sends, columns) to token i (receives, rows).
"use strict";
(() => {
  const DATA = JSON.parse(document.getElementById("explorer-data").textContent);
  const VIRIDIS = colourTable("44015444025645045745055946075a46085c460a5d460b5e470d60470e6147106347116447136548146748166848176948186a481a6c481b6d481c6e481d6f481f70482071482173482374482475482576482677482878482979472a7a472c7a472d7b472e7c472f7d46307e46327e46337f463480453581453781453882443983443a83443b84433d84433e85423f854240864241864142874144874045884046883f47883f48893e49893e4a893e4c8a3d4d8a3d4e8a3c4f8a3c508b3b518b3b528b3a538b3a548c39558c39568c38588c38598c375a8c375b8d365c8d365d8d355e8d355f8d34608d34618d33628d33638d32648e32658e31668e31678e31688e30698e306a8e2f6b8e2f6c8e2e6d8e2e6e8e2e6f8e2d708e2d718e2c718e2c728e2c738e2b748e2b758e2a768e2a778e2a788e29798e297a8e297b8e287c8e287d8e277e8e277f8e27808e26818e26828e26828e25838e25848e25858e24868e24878e23888e23898e238a8d228b8d228c8d228d8d218e8d218f8d21908d21918c20928c20928c20938c1f948c1f958b1f968b1f978b1f988b1f998a1f9a8a1e9b8a1e9c891e9d891f9e891f9f881fa0881fa1881fa1871fa28720a38620a48621a58521a68522a78522a88423a98324aa8325ab8225ac8226ad8127ad8128ae8029af7f2ab07f2cb17e2db27d2eb37c2fb47c31b57b32b67a34b67935b77937b87838b9773aba763bbb753dbc743fbc7340bd7242be7144bf7046c06f48c16e4ac16d4cc26c4ec36b50c46a52c56954c56856c66758c7655ac8645cc8635ec96260ca6063cb5f65cb5e67cc5c69cd5b6ccd5a6ece5870cf5773d05675d05477d1537ad1517cd2507fd34e81d34d84d44b86d54989d5488bd6468ed64590d74393d74195d84098d83e9bd93c9dd93ba0da39a2da37a5db36a8db34aadc32addc30b0dd2fb2dd2db5de2bb8de29bade28bddf26c0df25c2df23c5e021c8e020cae11fcde11dd0e11cd2e21bd5e21ad8e219dae319dde318dfe318e2e418e5e419e7e419eae51aece51befe51cf1e51df4e61ef6e620f8e621fbe723fde725");
  const DIVERGING = colourTable("05306106326407346708366a09386d0a3b700c3d730d3f760e41790f437b10457e114781124984134c87144e8a15508d1752901854931956961a58991b5a9c1c5c9f1d5fa21e61a51f63a82065ab2267ac2369ad246aae266caf276eb02870b12a71b22b73b32c75b42e77b52f79b5307ab6327cb7337eb83480b93681ba3783bb3885bc3a87bd3b88be3c8abe3e8cbf3f8ec0408fc14291c24393c34695c44997c54c99c64f9bc7529dc8569fc959a1ca5ca3cb5fa5cd62a7ce65a9cf68abd06bacd16eaed271b0d375b2d478b4d57bb6d67eb8d781bad884bcd987beda8ac0db8dc2dc90c4dd93c6de96c7df98c8e09bc9e09dcbe1a0cce2a2cde3a5cee3a7d0e4a9d1e5acd2e5aed3e6b1d5e7b3d6e8b6d7e8b8d8e9bbdaeabddbeac0dcebc2ddecc5dfecc7e0edcae1eecce2efcfe4efd1e5f0d2e6f0d4e6f1d5e7f1d7e8f1d8e9f1dae9f2dbeaf2ddebf2deebf2e0ecf3e1edf3e3edf3e4eef4e6eff4e7f0f4e9f0f4eaf1f5ecf2f5edf2f5eff3f5f0f4f6f2f5f6f3f5f6f5f6f7f6f7f7f7f6f6f7f5f4f8f4f2f8f3f0f8f2eff8f1edf9f0ebf9efe9f9eee7f9ede5f9ebe3faeae1fae9dffae8defae7dcfbe6dafbe5d8fbe4d6fbe3d4fce2d2fce0d0fcdfcffcdecdfdddcbfddcc9fddbc7fdd9c4fcd7c2fcd5bffcd3bcfbd0b9fbceb7fbccb4facab1fac8aff9c6acf9c4a9f9c2a7f8bfa4f8bda1f8bb9ef7b99cf7b799f7b596f6b394f6b191f6af8ef5ac8bf5aa89f5a886f4a683f3a481f2a17ff19e7df09c7bef9979ee9677ec9374eb9172ea8e70e98b6ee8896ce6866ae58368e48066e37e64e27b62e17860df765ede735cdd7059dc6e57db6b55da6853d86551d7634fd6604dd55d4cd35a4ad25849d05548cf5246ce4f45cc4c44cb4942c94741c84440c6413ec53e3dc43b3cc2383ac13639bf3338be3036bd2d35bb2a34ba2832b82531b72230b61f2eb41c2db3192cb1182bae172aab162aa81529a51429a213289f12289c1127991027960f27930e26900d268d0c258a0b25870a248409248108237f08237c07227906227605217304217003206d02206a011f67001f");
  const FUTURE = [230, 230, 230]; // cells a causal model cannot fill (j > i), apart from a learned zero
  const GRAPH_MAX_TOKENS = 160; // past this many selected tokens an arc graph is unreadable: none is drawn
  const LABELLED_TOKENS = 48; // a heatmap axis shows every token's label up to this many tokens
  const HEATMAP_PIXELS = 400;
  const LISTED = 6; // entries per list in the hover panel

  const windowStart = DATA.offset;
  const windowStop = DATA.offset + DATA.tokens.length;
  const overviewTokens = DATA.overview ? DATA.overview.tokens : DATA.tokens;
  const overviewOrigin = DATA.overview ? 0 : windowStart;
  const layers = [...new Set(DATA.captures.flatMap((capture) => capture.layers))].sort((a, b) => a - b);
  const headCount = Math.max(...DATA.captures.map((capture) => capture.heads.length));
  const sameTokens = DATA.captures.length === 2; // explorer_page refuses captures of different tokens
  const stageNames = [...DATA.stages, "A' − A_agg"];
  const hasStages = DATA.captures.some((capture) => Object.values(capture.data).some((entry) => entry.stages));
  const hasRollout = DATA.captures.some((capture) => Object.values(capture.data).some((entry) => entry.rollout));

  const state = {
    layer: layers[Math.floor(layers.length / 2)],
    head: "sum",
    view: "attention",
    stage: hasStages ? DATA.stages.length - 1 : 0,
    gamma: DATA.gamma,
    threshold: 0,
    topK: DATA.top_k,
    from: windowStart,
    to: Math.min(windowStop, windowStart + 64),
    hover: null,
  };

  function colourTable(hex) {
    const table = new Uint8Array(768);
    for (let k = 0; k < 768; k++) table[k] = parseInt(hex.substr(2 * k, 2), 16);
    return table;
  }

  // ------------------------------------------------------------------------------------------------- data
  // A blob is decoded the first time a view needs it, once: a long text's page holds every layer but shows one.
  const decoded = new Map();
  function blob(id) {
    if (!decoded.has(id)) decoded.set(id, decodeBlob(id));
    return decoded.get(id);
  }

  async function decodeBlob(id) {
    const description = DATA.blobs[id];
    const text = document.getElementById("blob-" + id).textContent.trim();
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let k = 0; k < binary.length; k++) bytes[k] = binary.charCodeAt(k);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    const buffer = await new Response(stream).arrayBuffer();
    const [count, size] = description.shape;
    const values = description.encoding === "float16" ? fromFloat16(new Uint16Array(buffer)) : fromLevels(new Uint8Array(buffer), description.scales, size * size);
    const matrices = [];
    for (let m = 0; m < count; m++) matrices.push({ size, values: values.subarray(m * size * size, (m + 1) * size * size) });
    return matrices;
  }

  function fromLevels(levels, scales, area) {
    // uint8 on a square-root scale: w = m · (q / 255)², m the matrix's largest weight
    const values = new Float32Array(levels.length);
    for (let k = 0; k < levels.length; k++) {
      const q = levels[k] / 255;
      values[k] = q * q * scales[Math.floor(k / area)];
    }
    return values;
  }

  function fromFloat16(halves) {
    const values = new Float32Array(halves.length);
    for (let k = 0; k < halves.length; k++) {
      const h = halves[k], sign = h & 0x8000 ? -1 : 1, exponent = (h >> 10) & 31, fraction = h & 1023;
      values[k] = exponent === 0 ? sign * fraction * 2 ** -24
        : exponent === 31 ? (fraction ? NaN : sign * Infinity)
        : sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
    }
    return values;
  }

  function combine(matrices, how) {
    const { size } = matrices[0];
    const values = new Float32Array(size * size);
    for (const matrix of matrices) for (let k = 0; k < values.length; k++) values[k] += matrix.values[k];
    if (how === "clamp") for (let k = 0; k < values.length; k++) values[k] = Math.min(1, values[k]);
    return { size, values };
  }

  function subtract(a, b) {
    const values = new Float32Array(a.values.length);
    for (let k = 0; k < values.length; k++) values[k] = a.values[k] - b.values[k];
    return { size: a.size, values, signed: true };
  }

  // What a capture shows for the current state at one level ("window": full resolution, "overview": the whole
  // text in cells of `block` tokens). Returns {matrix, block, origin, title} or {note} when there is nothing.
  async function shown(capture, level) {
    const entry = capture.data[state.layer];
    if (!entry) return { note: `layer ${state.layer} was not captured for ${capture.name}` };
    const pick = (kind) => {
      const refs = entry[kind];
      if (!refs) return null;
      if (level === "overview" && refs.overview !== undefined) return { id: refs.overview, block: DATA.overview.block, origin: 0 };
      return { id: refs.window, block: 1, origin: windowStart };
    };
    let source, matrix, title;
    if (state.view === "rollout") {
      source = pick("rollout");
      if (!source) return { note: `no rollout for ${capture.name}` };
      matrix = (await blob(source.id))[0];
      title = `attention rollout, layers 0–${state.layer}`;
    } else if (state.view === "sparse" && entry.stages) {
      source = pick("stages");
      const stages = await blob(source.id);
      matrix = state.stage < DATA.stages.length ? stages[state.stage] : subtract(stages[DATA.stages.length - 1], stages[0]);
      title = stageNames[state.stage];
    } else {
      source = pick("heads");
      const heads = await blob(source.id);
      if (state.view === "sparse") {
        matrix = combine(heads, "clamp");
        title = "no adapter: min(1, Σ_h A_h)";
      } else if (state.head === "sum") {
        matrix = combine(heads, "sum");
        title = `Σ over ${capture.heads.length} heads`;
      } else {
        const position = capture.heads.indexOf(state.head);
        if (position < 0) return { note: `head ${state.head} was not stored for ${capture.name}` };
        matrix = heads[position];
        title = `head ${state.head}`;
      }
    }
    return { matrix, block: source.block, origin: source.origin, title };
  }

  // ------------------------------------------------------------------------------------------------- colours
  function colour(value, scale) {
    if (scale.signed) {
      const t = Math.max(-1, Math.min(1, value / scale.max));
      const k = Math.round(((Math.sign(t) * Math.abs(t) ** state.gamma + 1) / 2) * 255);
      return DIVERGING.subarray(3 * k, 3 * k + 3);
    }
    const t = Math.max(0, Math.min(1, value / scale.max)) ** state.gamma;
    const k = Math.round(t * 255);
    return VIRIDIS.subarray(3 * k, 3 * k + 3);
  }

  function largest(matrix, first, count, diagonal = true) {
    // the largest |weight| among rows and columns first..first+count-1 of a matrix, 0 above the diagonal;
    // without the diagonal: of the edges between two tokens, what the graph draws
    let top = 0;
    for (let i = first; i < first + count; i++)
      for (let j = first; j < (diagonal ? i + 1 : i); j++) top = Math.max(top, Math.abs(matrix.values[i * matrix.size + j]));
    return top;
  }

  // ------------------------------------------------------------------------------------------------- heatmaps
  // Cells first..first+count-1 of `matrix` on a canvas, one device pixel block per cell, labels where they fit.
  function drawHeatmap(canvas, matrix, first, count, scale, labels) {
    const ratio = window.devicePixelRatio || 1;
    const margin = labels ? 70 : 30;
    const side = HEATMAP_PIXELS;
    canvas.style.width = canvas.style.height = `${side}px`;
    canvas.width = canvas.height = Math.round(side * ratio);
    const context = canvas.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.clearRect(0, 0, side, side);
    const image = new ImageData(count, count);
    for (let i = 0; i < count; i++) {
      for (let j = 0; j < count; j++) {
        const rgb = j > i ? FUTURE : colour(matrix.values[(first + i) * matrix.size + first + j], scale);
        image.data.set(rgb, 4 * (i * count + j));
        image.data[4 * (i * count + j) + 3] = 255;
      }
    }
    const cells = document.createElement("canvas");
    cells.width = cells.height = count;
    cells.getContext("2d").putImageData(image, 0, 0);
    context.imageSmoothingEnabled = false; // one cell stays a crisp square, never a blur
    const inner = side - margin - 4;
    context.drawImage(cells, margin, 4, inner, inner);
    canvas.geometry = { margin, inner, count, first };
    context.fillStyle = "#444";
    context.font = "9px sans-serif";
    const cell = inner / count;
    if (labels) {
      for (let k = 0; k < count; k++) {
        const label = labels[k].length > 9 ? labels[k].slice(0, 8) + "…" : labels[k];
        context.textAlign = "right";
        context.fillText(label, margin - 3, 4 + (k + 0.7) * cell);
        context.save();
        context.translate(margin + (k + 0.5) * cell, side - margin + 4);
        context.rotate(-Math.PI / 2);
        context.fillText(label, 0, 3);
        context.restore();
      }
    }
    return context;
  }

  function positionTicks(canvas, context, firstPosition, perCell) {
    // round position numbers along both axes of an unlabelled heatmap
    const { margin, inner, count } = canvas.geometry;
    const span = count * perCell;
    const step = niceStep(span / 5);
    context.fillStyle = "#444";
    context.font = "9px sans-serif";
    for (let position = Math.ceil(firstPosition / step) * step; position < firstPosition + span; position += step) {
      const at = ((position - firstPosition + 0.5) / span) * inner;
      context.textAlign = "center";
      context.fillText(String(position), margin + at, HEATMAP_PIXELS - margin + 14);
      context.textAlign = "right";
      context.fillText(String(position), margin - 3, 4 + at + 3);
    }
  }

  function niceStep(raw) {
    const power = 10 ** Math.floor(Math.log10(Math.max(raw, 1)));
    return [1, 2, 5, 10].map((m) => m * power).find((step) => step >= raw);
  }

  function outline(canvas, context, fromCell, toCell, style, dashed) {
    const { margin, inner, count } = canvas.geometry;
    const cell = inner / count;
    context.save();
    context.strokeStyle = style;
    context.lineWidth = 1.5;
    if (dashed) context.setLineDash([4, 3]);
    context.strokeRect(margin + fromCell * cell, 4 + fromCell * cell, (toCell - fromCell) * cell, (toCell - fromCell) * cell);
    context.restore();
  }

  function drawColourBar(canvas, scale) {
    const ratio = window.devicePixelRatio || 1;
    const width = HEATMAP_PIXELS, height = 30;
    canvas.style.width = `${width}px`;
    canvas.style.height = `${height}px`;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const context = canvas.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    const left = 30, span = width - left - 10;
    const low = scale.signed ? -scale.max : 0;
    for (let x = 0; x < span; x++) {
      const value = low + ((scale.max - low) * x) / (span - 1);
      const rgb = colour(value, scale);
      context.fillStyle = `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`;
      context.fillRect(left + x, 0, 1, 12);
    }
    context.fillStyle = "#444";
    context.font = "9px sans-serif";
    context.textAlign = "center";
    for (let t = 0; t <= 4; t++) {
      const value = low + ((scale.max - low) * t) / 4;
      context.fillText(format(value), left + (span * t) / 4, 24);
    }
  }

  function format(value) {
    if (value === 0) return "0";
    const size = Math.abs(value);
    return size >= 1 ? value.toPrecision(3) : size >= 0.01 ? value.toFixed(3) : value.toExponential(1);
  }

  // ------------------------------------------------------------------------------------------------- graphs
  // The causal graph of the selected tokens in reading order: each token's top-k strongest incoming edges from
  // earlier tokens whose weight reaches the threshold, as arcs above the line (paper Fig. 2B). Self-loops are the
  // node's shade.
  function drawGraph(container, matrix, first, count, scale) {
    container.textContent = "";
    if (matrix.signed) {
      container.innerHTML = '<p class="note">a difference has no graph: its heatmap shows it</p>';
      return 0;
    }
    if (count > GRAPH_MAX_TOKENS) {
      container.innerHTML = `<p class="note">select at most ${GRAPH_MAX_TOKENS} tokens to draw the graph (now ${count})</p>`;
      return 0;
    }
    const spacing = Math.max(14, Math.min(40, 420 / count));
    const left = 12, lift = 190, base = lift + 10;
    const width = left * 2 + spacing * (count - 1);
    const svg = element("svg", { width, height: base + 70 });
    const x = (k) => left + k * spacing;
    let edges = 0;
    const drawnEdges = [];
    for (let i = 1; i < count; i++) {
      const row = (first + i) * matrix.size + first;
      const incoming = [];
      for (let j = 0; j < i; j++) {
        const weight = matrix.values[row + j];
        if (weight > 0 && weight >= state.threshold) incoming.push([weight, j]);
      }
      incoming.sort((a, b) => b[0] - a[0]);
      for (const [weight, j] of incoming.slice(0, state.topK)) drawnEdges.push([weight, j, i]);
    }
    drawnEdges.sort((a, b) => a[0] - b[0]); // strong edges last, on top
    for (const [weight, j, i] of drawnEdges) {
      const rx = (x(i) - x(j)) / 2, ry = Math.min(rx, lift);
      const strength = Math.min(1, weight / scale.max);
      svg.appendChild(element("path", {
        class: "edge",
        d: `M ${x(j)} ${base} A ${rx} ${ry} 0 0 1 ${x(i)} ${base}`,
        "stroke-width": (0.4 + 2.6 * strength).toFixed(2),
        "stroke-opacity": (0.15 + 0.85 * strength ** state.gamma).toFixed(3),
        "data-from": first + j + windowStart,
        "data-to": first + i + windowStart,
        "data-weight": weight.toFixed(4),
      }));
      edges++;
    }
    for (let k = 0; k < count; k++) {
      const position = first + k + windowStart;
      const self = matrix.values[(first + k) * matrix.size + first + k];
      const rgb = colour(self, scale);
      svg.appendChild(element("circle", { class: "node", cx: x(k), cy: base, r: 3.5, fill: `rgb(${rgb[0]},${rgb[1]},${rgb[2]})` }));
      const label = element("text", { class: "token", x: x(k), y: base + 10, transform: `rotate(60 ${x(k)} ${base + 10})`, "data-pos": position });
      label.textContent = DATA.tokens[first + k];
      label.addEventListener("mouseenter", () => setHover(position));
      svg.appendChild(label);
    }
    svg.addEventListener("mouseleave", () => setHover(null));
    container.appendChild(svg);
    return edges;
  }

  function element(name, attributes) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", name);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
    return node;
  }

  // ------------------------------------------------------------------------------------------------- panels
  const panels = document.getElementById("panels");
  const sections = DATA.captures.map((capture, index) => makeSection(capture.name, index));
  const difference = sameTokens ? makeSection(`${DATA.captures[1].name} − ${DATA.captures[0].name}`, "difference") : null;

  function makeSection(name, index) {
    const section = document.createElement("section");
    section.className = "capture";
    section.dataset.capture = index;
    section.innerHTML = `<h2></h2><p class="kind"></p><h3>the whole text</h3><canvas class="overview"></canvas>
      <h3 class="zoom-title"></h3><canvas class="zoom"></canvas><canvas class="colour-bar"></canvas>
      <h3>causal graph of the selected tokens</h3><div class="graph"></div>`;
    section.querySelector("h2").textContent = name;
    panels.appendChild(section);
    const overview = section.querySelector("canvas.overview");
    const zoom = section.querySelector("canvas.zoom");
    overview.addEventListener("mousedown", (event) => startSelection(event, overview));
    zoom.addEventListener("mousemove", (event) => hoverCell(event, zoom));
    zoom.addEventListener("mouseleave", () => setHover(null));
    return section;
  }

  let ticket = 0;
  let renders = 0;
  let current = []; // per capture: {window: shown, overview: shown} of the last render

  async function render() {
    const mine = ++ticket;
    const views = await Promise.all(DATA.captures.map(async (capture) => ({
      window: await shown(capture, "window"),
      overview: await shown(capture, "overview"),
    })));
    if (mine !== ticket) return; // a newer state is being drawn
    current = views;
    const first = state.from - windowStart, count = state.to - state.from;
    const zoomScale = sharedScale(views.map((view) => view.window), first, count);
    const strongestEdge = Math.max(0, ...views.filter((view) => view.window.matrix).map((view) => largest(view.window.matrix, first, count, false)));
    const overviewScale = sharedScale(views.map((view) => view.overview), 0, null);
    views.forEach((view, index) => {
      const capture = DATA.captures[index];
      drawSection(sections[index], view, zoomScale, overviewScale, first, count, capture.kinds[state.layer] || "");
    });
    if (difference) {
      const [a, b] = views;
      const both = (level) => (a[level].matrix && b[level].matrix && a[level].block === b[level].block
        ? { ...a[level], matrix: subtract(b[level].matrix, a[level].matrix), title: "difference" } : { note: "nothing to compare" });
      const diff = { window: both("window"), overview: both("overview") };
      drawSection(difference, diff, sharedScale([diff.window], first, count), sharedScale([diff.overview], 0, null), first, count,
        "right panel minus left panel, same colour exponent");
    }
    updateControls(strongestEdge || zoomScale.max);
    setHover(state.hover);
    document.body.dataset.renders = ++renders;
    document.body.dataset.ready = "true";
  }

  function sharedScale(views, first, count) {
    // one colour scale for the panels side by side, so equal colours mean equal weights
    let max = 0, signed = false;
    for (const view of views) {
      if (!view.matrix) continue;
      signed = signed || Boolean(view.matrix.signed);
      max = Math.max(max, largest(view.matrix, count === null ? 0 : first, count === null ? view.matrix.size : count));
    }
    return { max: max || 1, signed };
  }

  function drawSection(section, view, zoomScale, overviewScale, first, count, kind) {
    section.dataset.layer = state.layer;
    section.dataset.head = state.head;
    section.dataset.view = state.view;
    section.querySelector(".kind").textContent = `layer ${state.layer}: ${kind}`;
    const overview = section.querySelector("canvas.overview");
    const zoom = section.querySelector("canvas.zoom");
    const graph = section.querySelector(".graph");
    if (!view.window.matrix) {
      section.querySelector(".zoom-title").textContent = view.window.note;
      for (const canvas of [overview, zoom]) canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
      graph.textContent = "";
      section.dataset.edges = 0;
      return;
    }
    const o = view.overview;
    const context = drawHeatmap(overview, o.matrix, 0, o.matrix.size, overviewScale, null);
    positionTicks(overview, context, o.origin, o.block);
    overview.geometry.origin = o.origin;
    overview.geometry.block = o.block;
    const cellOf = (position) => (position - o.origin) / o.block;
    if (o.block > 1) outline(overview, context, cellOf(windowStart), cellOf(windowStop), "#fff", true);
    outline(overview, context, cellOf(state.from), cellOf(state.to), "#D55E00", false);
    const labels = count <= LABELLED_TOKENS ? DATA.tokens.slice(first, first + count) : null;
    const zoomContext = drawHeatmap(zoom, view.window.matrix, first, count, zoomScale, labels);
    if (!labels) positionTicks(zoom, zoomContext, state.from, 1);
    section.querySelector(".zoom-title").textContent = `${view.window.title}, tokens ${state.from}–${state.to - 1}`;
    drawColourBar(section.querySelector("canvas.colour-bar"), zoomScale);
    section.dataset.edges = drawGraph(graph, view.window.matrix, first, count, zoomScale);
  }

  // ------------------------------------------------------------------------------------------------- hovering
  function setHover(position) {
    state.hover = position;
    for (const section of [...sections, difference].filter(Boolean)) {
      const svg = section.querySelector("svg");
      if (!svg) continue;
      svg.classList.toggle("hovering", position !== null);
      for (const edge of svg.querySelectorAll(".edge")) {
        edge.classList.toggle("in", position !== null && Number(edge.dataset.to) === position);
        edge.classList.toggle("out", position !== null && Number(edge.dataset.from) === position);
      }
      for (const token of svg.querySelectorAll(".token")) token.classList.toggle("hovered", Number(token.dataset.pos) === position);
    }
    describeHover(position);
  }

  function describeHover(position) {
    const info = document.getElementById("hover-info");
    if (position === null || position < windowStart || position >= windowStop) {
      info.innerHTML = '<p class="hint">hover a token in a graph or a heatmap to see what it reads from and what reads it</p>';
      return;
    }
    info.textContent = "";
    const i = position - windowStart;
    current.forEach((view, index) => {
      const matrix = view.window.matrix;
      if (!matrix) return;
      const reads = [], readBy = [];
      for (let j = 0; j <= i; j++) reads.push([matrix.values[i * matrix.size + j], j]);
      for (let k = i; k < matrix.size; k++) readBy.push([matrix.values[k * matrix.size + i], k]);
      const block = document.createElement("div");
      block.className = "hovered-token";
      block.innerHTML = `<h2></h2><div class="reads"><b>reads from</b><ol></ol></div><div class="read-by"><b>read by</b><ol></ol></div>`;
      block.querySelector("h2").textContent = `${DATA.captures[index].name}: “${DATA.tokens[i]}” (token ${position}), ${view.window.title}`;
      fill(block.querySelector(".reads ol"), reads);
      fill(block.querySelector(".read-by ol"), readBy);
      info.appendChild(block);
    });
  }

  function fill(list, entries) {
    entries.sort((a, b) => Math.abs(b[0]) - Math.abs(a[0]));
    for (const [weight, k] of entries.slice(0, LISTED)) {
      const item = document.createElement("li");
      item.textContent = `${DATA.tokens[k]} (${k + windowStart})  ${format(weight)}`;
      list.appendChild(item);
    }
  }

  function hoverCell(event, canvas) {
    const geometry = canvas.geometry;
    if (!geometry) return;
    const box = canvas.getBoundingClientRect();
    const cell = geometry.inner / geometry.count;
    const row = Math.floor((event.clientY - box.top - 4) / cell);
    if (row < 0 || row >= geometry.count) return;
    const position = state.from + row;
    if (position !== state.hover) setHover(position);
  }

  // ------------------------------------------------------------------------------------------------- selection
  function startSelection(event, canvas) {
    const geometry = canvas.geometry;
    const box = canvas.getBoundingClientRect();
    const toPosition = (clientX) => {
      const cell = Math.floor(((clientX - box.left - geometry.margin) / geometry.inner) * geometry.count);
      return geometry.origin + Math.max(0, Math.min(geometry.count - 1, cell)) * geometry.block;
    };
    const anchor = toPosition(event.clientX);
    const finish = (up) => {
      document.removeEventListener("mouseup", finish);
      const other = toPosition(up.clientX);
      const geometryBlock = geometry.block;
      setRange(Math.min(anchor, other), Math.max(anchor, other) + geometryBlock);
    };
    document.addEventListener("mouseup", finish);
  }

  function setRange(from, to) {
    const start = Math.max(windowStart, Math.min(from, windowStop - 1));
    const stop = Math.max(start + 1, Math.min(to, windowStop));
    state.from = start;
    state.to = stop;
    render();
  }

  // ------------------------------------------------------------------------------------------------- controls
  function button(label, onClick) {
    const node = document.createElement("button");
    node.type = "button";
    node.textContent = label;
    node.addEventListener("click", onClick);
    return node;
  }

  function buildGrid() {
    const table = document.createElement("table");
    const header = table.insertRow();
    header.appendChild(document.createElement("th"));
    for (const head of ["Σ", ...Array.from({ length: headCount }, (_, h) => h)]) {
      const cell = document.createElement("th");
      cell.textContent = head;
      header.appendChild(cell);
    }
    for (const layer of layers) {
      const row = table.insertRow();
      const name = document.createElement("th");
      name.textContent = `L${layer}`;
      row.appendChild(name);
      for (const head of ["sum", ...Array.from({ length: headCount }, (_, h) => h)]) {
        const node = button(head === "sum" ? "Σ" : String(head), () => select(layer, head));
        node.dataset.layer = layer;
        node.dataset.head = head;
        node.title = `layer ${layer}, ${head === "sum" ? "sum over heads" : "head " + head}`;
        row.insertCell().appendChild(node);
      }
    }
    document.getElementById("grid").appendChild(table);
  }

  function select(layer, head) {
    state.layer = layer;
    state.head = head;
    render();
  }

  function buildViews() {
    const views = document.getElementById("views");
    const choices = [["attention", "attention"]];
    if (hasStages) choices.push(["sparse", "Sparse-GIN stages"]);
    if (hasRollout) choices.push(["rollout", "rollout"]);
    for (const [value, label] of choices) views.appendChild(radio("view", value, label, state.view === value, () => {
      state.view = value;
      render();
    }));
    const stages = document.getElementById("stage-choice");
    stages.hidden = !hasStages;
    stageNames.forEach((name, index) => stages.appendChild(radio("stage", index, name, state.stage === index, () => {
      state.stage = index;
      render();
    })));
  }

  function radio(group, value, label, checked, onChange) {
    const wrapper = document.createElement("label");
    const input = document.createElement("input");
    Object.assign(input, { type: "radio", name: group, value, checked });
    input.addEventListener("change", onChange);
    wrapper.append(input, " " + label);
    return wrapper;
  }

  function bindControls() {
    const gamma = document.getElementById("gamma");
    gamma.value = state.gamma;
    gamma.addEventListener("input", () => {
      state.gamma = Number(gamma.value);
      render();
    });
    const threshold = document.getElementById("threshold");
    threshold.addEventListener("input", () => {
      state.threshold = Number(threshold.value);
      render();
    });
    const topK = document.getElementById("top-k");
    topK.value = state.topK;
    topK.addEventListener("input", () => {
      state.topK = Number(topK.value);
      render();
    });
    const from = document.getElementById("range-from"), to = document.getElementById("range-to");
    for (const input of [from, to]) {
      input.min = windowStart;
      input.max = windowStop;
      input.addEventListener("change", () => setRange(Number(from.value), Number(to.value)));
    }
    document.addEventListener("keydown", (event) => {
      if (event.target instanceof HTMLInputElement) return;
      const heads = ["sum", ...Array.from({ length: headCount }, (_, h) => h)];
      const layerAt = layers.indexOf(state.layer), headAt = heads.indexOf(state.head);
      const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
      if (!(event.key in moves)) return;
      event.preventDefault();
      const [dl, dh] = moves[event.key];
      select(layers[Math.max(0, Math.min(layers.length - 1, layerAt + dl))], heads[Math.max(0, Math.min(heads.length - 1, headAt + dh))]);
    });
  }

  function updateControls(strongestEdge) {
    document.getElementById("gamma-value").textContent = state.gamma.toFixed(2);
    const threshold = document.getElementById("threshold");
    // the slider spans the edges on show, so its whole travel means something for a head and for a sum
    threshold.max = strongestEdge.toPrecision(3);
    threshold.step = (strongestEdge / 200).toPrecision(2);
    if (state.threshold > strongestEdge) state.threshold = Number(threshold.max);
    threshold.value = state.threshold;
    document.getElementById("threshold-value").textContent = format(state.threshold);
    document.getElementById("top-k-value").textContent = state.topK;
    document.getElementById("range-from").value = state.from;
    document.getElementById("range-to").value = state.to;
    document.getElementById("stage-choice").hidden = !(hasStages && state.view === "sparse");
    for (const node of document.querySelectorAll("#grid button")) {
      node.classList.toggle("selected", Number(node.dataset.layer) === state.layer && node.dataset.head === String(state.head));
    }
    for (const row of document.querySelectorAll("#scalars tr[data-layer]")) row.classList.toggle("selected", Number(row.dataset.layer) === state.layer);
  }

  function buildScalars() {
    const container = document.getElementById("scalars");
    for (const capture of DATA.captures) {
      const rows = Object.entries(capture.scalars);
      if (!rows.length) continue;
      const symbols = Object.keys(rows[0][1]);
      const title = document.createElement("h2");
      title.textContent = `${capture.name}: learned graph scalars`;
      const table = document.createElement("table");
      const header = table.insertRow();
      for (const name of ["layer", ...symbols]) header.appendChild(Object.assign(document.createElement("th"), { textContent: name }));
      for (const [layer, values] of rows) {
        const row = table.insertRow();
        row.dataset.layer = layer;
        row.insertCell().textContent = layer;
        for (const symbol of symbols) row.insertCell().textContent = format(values[symbol]);
      }
      container.append(title, table);
    }
  }

  function describePage() {
    const megabytes = (bytes) => (bytes / 1e6).toFixed(1) + " MB";
    const parts = [`${DATA.length} tokens`, `full resolution for tokens ${windowStart}–${windowStop - 1}`];
    if (DATA.overview && DATA.overview.block > 1) parts.push(`whole text in cells of ${DATA.overview.block}×${DATA.overview.block} tokens (each cell the strongest edge among them)`);
    parts.push(`weights stored as ${DATA.precision === "uint8" ? "8 bits on a square-root scale" : "float16"}`, `data ${megabytes(DATA.stored)} before compression`);
    document.getElementById("summary").textContent = parts.join(" · ");
    const notes = [
      "Rows are the tokens that receive (queries i), columns the tokens that send (keys j); grey cells are the future (j > i), which a causal model cannot attend to. Colours follow weight^γ against the largest weight on show, shared by the panels side by side.",
      "Drag across the whole-text heatmap to choose the tokens shown at full resolution and drawn as a graph; the dashed square marks the tokens kept at full resolution.",
      "The graph draws, per token, its top-k strongest incoming edges from earlier tokens whose weight reaches the threshold; a node's shade is its self-loop.",
    ];
    if (hasRollout) notes.push(`Rollout (Abnar & Zuidema 2020): heads averaged, the identity added, rows renormalised, multiplied over layers 0 to the selected one. Its whole-text view is computed for texts of at most ${DATA.rollout_limit} tokens; inside the window it is exact for any length.`);
    if (hasStages) notes.push("Sparse-GIN stages: min(1, Σ_h A_h) → sigmoid(α(A − τ)) → 0 where ≤ ε → causal mask (and top-k): A', the graph the adapter passes messages on; A' − A_agg is what the sparsification changed.");
    const footer = document.getElementById("notes");
    for (const note of notes) footer.appendChild(Object.assign(document.createElement("p"), { textContent: note }));
  }

  buildGrid();
  buildViews();
  buildScalars();
  bindControls();
  describePage();
  render().catch((error) => {
    console.error(error);
    document.getElementById("summary").textContent = `could not draw: ${error}`;
  });
})();
