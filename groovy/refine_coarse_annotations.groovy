/*
 * qupath-refine: refine the coarse tumour annotations of this QuPath project.
 *
 * QuPath 0.4 to 0.7, in the GUI (Extensions > Refine coarse annotations..., or the script editor)
 * and headless:  QuPath script -p /path/project.qpproj refine_coarse_annotations.groovy
 *                [-a python=/abs/path/python -a class=Tumor -a negative=Ignore* -a encoder=...]
 *
 * 1. Exports every image's annotations to <project>/qupath-refine/export/ as QuPath GeoJSON plus a
 *    manifest.json (written last, atomically). The image open in QuPath is exported from its live
 *    hierarchy, so unsaved edits count; the others from their saved data files.
 * 2. Runs `<python> -m qupath_bridge.cli <project.qpproj> --from-export <export dir> --progress-lines`
 *    with PAQUO_QUPATH_DIR set to this QuPath's installation, streaming its output into the log.
 *    Python writes the refined objects into the data files of the images that are not open.
 * 3. For the open image (whose data file Python leaves alone), replaces the previous refined
 *    detections and tiles (never annotations, never locked objects) by the result GeoJSON in the
 *    live hierarchy, so the result shows at once and the next save keeps it.
 * On any failure the hierarchy is left unchanged.
 *
 * Relies on QuPath's default imports (QPEx's static methods, Dialogs, ...): run it in QuPath.
 */

// ============================ settings =============================================
// Absolute path of the Python that has qupath-refine installed (a QuPath started from the desktop
// has no shell PATH), e.g. '/home/me/qupath-refine/.venv/bin/python' or
// 'C:\\Users\\me\\qupath-refine\\.venv\\Scripts\\python.exe'. Empty: the environment variable
// QUPATH_REFINE_PYTHON, then what was last entered in the dialog.
@groovy.transform.Field String PYTHON = ''
@groovy.transform.Field String COARSE_CLASS = 'Tumor'          // class of the coarse annotations
@groovy.transform.Field String NEGATIVE_CLASS = 'Ignore*'      // annotations that are not tumour
@groovy.transform.Field String ENCODER = 'efficientnet-lite0'   // patch encoder
@groovy.transform.Field String EXTRA_ARGS = ''                  // more options, e.g. '--outline redraw'
@groovy.transform.Field boolean SHOW_DIALOG = true              // GUI: confirm settings first
// ====================================================================================

@groovy.transform.Field final String TITLE = 'Refine coarse annotations'
@groovy.transform.Field final String PREFS_NODE = 'qupath-refine'
@groovy.transform.Field final int EXPORT_VERSION = 2
@groovy.transform.Field final LOG = org.slf4j.LoggerFactory.getLogger('qupath-refine')

checkQuPathVersion()
refineProject()

// ------------------------------------------------------------------------------------
void checkQuPathVersion() {
    try {
        if (VERSION != null) {
            checkMinVersion('0.4.0')
        }
    } catch (MissingPropertyException | MissingMethodException ignored) {
        throw new UnsupportedOperationException('qupath-refine needs QuPath 0.4 or later')
    }
    String v = qupathVersion()
    def m = v =~ /^(\d+)\.(\d+)/
    if (m.find() && (m.group(1) as int) == 0 && (m.group(2) as int) > 7) {
        LOG.warn('qupath-refine was tested with QuPath 0.4 to 0.7, this is {}', v)
    }
}

void refineProject() {
    // `QuPath script -p` runs a script once per image: refine the whole project on the first one
    int batchIndex = bindingInt('qupath.script.batchIndex', 0)
    if (batchIndex > 0) {
        LOG.info('qupath-refine already ran for this project in this batch; skipping {}',
                getProjectEntry()?.getImageName())
        return
    }
    def gui = guiOrNull()
    if (gui != null && bindingInt('qupath.script.batchSize', 1) > 1) {
        fail(gui, 'Use Run, not Run for project: the script always refines the whole project.', null)
        return
    }
    def project = getProject()
    if (project == null) {
        fail(gui, 'Open a project first: qupath-refine works on the images of a QuPath project.', null)
        return
    }
    Map settings = resolveSettings(gui)
    if (settings == null) {
        LOG.info('qupath-refine cancelled')
        return
    }
    if (!settings.python) {
        fail(gui, 'No Python set. Put the absolute path of the Python that has qupath-refine installed ' +
                'into PYTHON at the top of the script, the dialog, or the QUPATH_REFINE_PYTHON variable.', null)
        return
    }
    if (!new File(settings.python as String).isFile()) {
        fail(gui, "Python not found: ${settings.python}", null)
        return
    }

    File projectFile = project.getPath().toFile()
    File baseDir = new File(projectFile.parentFile, 'qupath-refine')
    File exportDir = new File(baseDir, 'export')
    File resultsDir = new File(baseDir, 'results')

    def liveImageData = getCurrentImageData()
    def liveEntry = liveImageData == null ? null : project.getEntry(liveImageData)
    String liveId = liveEntry?.getID()

    Map manifest
    try {
        manifest = exportProject(project, projectFile, exportDir, liveImageData, liveId)
    } catch (InterruptedException e) {
        LOG.info('qupath-refine cancelled during export')
        return
    }
    if (manifest.images.isEmpty()) {
        fail(gui, 'The project has no images.', null)
        return
    }

    long started = System.currentTimeMillis()
    List<String> command = [settings.python as String, '-m', 'qupath_bridge.cli', projectFile.absolutePath,
                            '--from-export', exportDir.absolutePath, '--progress-lines',
                            '--class', settings.coarse as String, '--negative-class', settings.negative as String,
                            '--encoder', settings.encoder as String]
    command.addAll(splitArgs(settings.extra as String))
    Map outcome = runProcess(command, projectFile.parentFile)
    if (outcome.cancelled) {
        LOG.warn('qupath-refine cancelled: the process was stopped, nothing was imported')
        return
    }
    if (outcome.exitCode != 0) {
        String last = outcome.lastError ?: "exit code ${outcome.exitCode}"
        fail(gui, "qupath-refine failed: ${last}\n(full output in the log)", null)
        return
    }

    Map results = readResults(resultsDir, manifest, started)
    if (results == null) {
        fail(gui, "qupath-refine finished but wrote no fresh ${new File(resultsDir, 'manifest.json')}", null)
        return
    }
    int imported = 0
    if (liveId != null) {
        def entryResult = results.images.find { it.id?.toString() == liveId }
        if (entryResult != null) {
            imported = importLive(gui, liveEntry, liveImageData, resultsDir, entryResult)
        }
    }
    refreshProject(gui)
    String summary = "Refined ${results.images.size()} image(s)" +
            (liveId != null ? "; ${imported} object(s) shown in the open image" : '')
    LOG.info(summary)
    if (gui != null) {
        onFx { Dialogs.showInfoNotification(TITLE, summary) }
    }
}

// ---------------------------------- settings ------------------------------------------
Map resolveSettings(def gui) {
    def prefs = java.util.prefs.Preferences.userRoot().node(PREFS_NODE)
    Map args = scriptArgs()
    String python = args.python ?: PYTHON ?: System.getenv('QUPATH_REFINE_PYTHON') ?: prefs.get('python', '')
    Map s = [python : python,
             coarse  : args['class'] ?: (gui != null ? prefs.get('coarse', COARSE_CLASS) : COARSE_CLASS),
             negative: args.negative ?: (gui != null ? prefs.get('negative', NEGATIVE_CLASS) : NEGATIVE_CLASS),
             encoder : args.encoder ?: (gui != null ? prefs.get('encoder', ENCODER) : ENCODER),
             extra   : args.extra ?: (gui != null ? prefs.get('extra', EXTRA_ARGS) : EXTRA_ARGS)]
    if (gui == null || !SHOW_DIALOG) {
        return s
    }
    Map chosen = onFx { settingsDialog(s) } as Map
    if (chosen != null) {
        chosen.each { k, v -> prefs.put(k as String, (v ?: '') as String) }
        prefs.flush()
    }
    return chosen
}

Map settingsDialog(Map s) {
    def grid = new javafx.scene.layout.GridPane()
    grid.setHgap(8)
    grid.setVgap(6)
    def labels = [python  : 'Python (absolute path)', coarse: 'Coarse class', negative: 'Negative class',
                  encoder : 'Encoder', extra: 'Extra options']
    Map fields = [:]
    labels.eachWithIndex { key, label, row ->
        def field = new javafx.scene.control.TextField((s[key] ?: '') as String)
        field.setPrefColumnCount(key == 'python' ? 36 : 20)
        grid.add(new javafx.scene.control.Label(label as String), 0, row)
        grid.add(field, 1, row)
        fields[key] = field
    }
    if (!Dialogs.showConfirmDialog(TITLE, grid)) {
        return null
    }
    return fields.collectEntries { k, f -> [(k): f.getText()?.trim()] }
}

Map scriptArgs() {
    // `-a key=value` on the command line
    Map out = [:]
    if (!binding.hasVariable('args') || args == null) {
        return out
    }
    args.each { a ->
        def m = (a as String) =~ /^\s*-*([A-Za-z_]+)\s*=(.*)$/
        if (m.matches()) {
            out[m.group(1).toLowerCase()] = m.group(2).trim()
        }
    }
    return out
}

// ----------------------------------- export -------------------------------------------
Map exportProject(def project, File projectFile, File exportDir, def liveImageData, String liveId) {
    File imagesDir = new File(exportDir, 'images')
    File memoryDir = new File(exportDir.parentFile, 'memory')
    imagesDir.mkdirs()
    new File(exportDir, 'manifest.json').delete()   // never leave an old manifest next to new files
    imagesDir.listFiles()?.findAll { it.name.endsWith('.geojson') }?.each { it.delete() }

    List images = []
    for (def entry in project.getImageList()) {
        if (Thread.currentThread().isInterrupted()) {
            throw new InterruptedException()
        }
        String id = entry.getID()
        boolean live = liveId != null && id == liveId
        def hierarchy = live ? liveImageData.getHierarchy() : entry.readHierarchy()
        def annotations = hierarchy.getAnnotationObjects()
        // Python decides what the detections mean; it needs the locked ones (kept: new regions are
        // cut around them) and those of the refined class it last wrote here, named in its memory
        // file (to see which the user deleted). The class name is never re-derived here.
        List<String> remembered = rememberedClasses(memoryDir, id)
        def detections = hierarchy.getDetectionObjects().findAll { o ->
            !o.isTile() && (o.isLocked() || (o.getPathClass() != null && o.getPathClass().toString() in remembered))
        }
        File geojson = new File(imagesDir, "${id}.geojson")
        exportObjectsToGeoJson(annotations + detections, geojson.absolutePath, 'FEATURE_COLLECTION')
        Map md = metadata(entry, live ? liveImageData : null, projectFile)
        images << [name          : entry.getImageName(),
                   id            : id,
                   slide         : localSlide(entry),
                   geojson       : "images/${id}.geojson".toString(),
                   pixel_width_um : md.pw,
                   pixel_height_um: md.ph,
                   width         : md.width,
                   height        : md.height,
                   open_in_gui   : live,
                   detection_classes: remembered]
        LOG.info('Exported {} annotation(s) and {} detection(s) of {}{}', annotations.size(),
                detections.size(), entry.getImageName(),
                live ? ' (open image, live)' : '')
    }
    Map manifest = [format        : 'qupath-refine-export',
                    version       : EXPORT_VERSION,
                    qupath_version: qupathVersion(),
                    project       : projectFile.absolutePath,
                    created       : java.time.OffsetDateTime.now().toString(),
                    images        : images]
    writeAtomically(new File(exportDir, 'manifest.json'), toJson(manifest))
    return manifest
}

List<String> rememberedClasses(File memoryDir, String id) {
    // qupath_bridge/memory.py writes memory/<id>.json: the refined class it put into the image
    File f = new File(memoryDir, "${id}.json")
    if (!f.isFile()) {
        return []
    }
    try {
        def cls = fromJson(f.getText('UTF-8'))?.refined_class
        return cls ? [cls as String] : []
    } catch (Exception e) {
        LOG.warn('Could not read {}: {}', f, e.getMessage())
        return []
    }
}

String localSlide(def entry) {
    try {
        def uris = entry.getURIs()
        if (uris == null || uris.size() != 1) {
            return null
        }
        def uri = uris.iterator().next()
        return uri.getScheme() == 'file' ? new File(uri).absolutePath : null
    } catch (Exception e) {
        LOG.debug('No local slide for {}: {}', entry.getImageName(), e.getMessage())
        return null
    }
}

Map metadata(def entry, def liveImageData, File projectFile) {
    def md = null
    try {
        if (liveImageData != null) {
            md = liveImageData.getServer().getMetadata()
        } else {
            def builder = entry.getServerBuilder()
            def opt = builder?.metaClass?.respondsTo(builder, 'getMetadata') ? builder.getMetadata() : null
            md = opt instanceof Optional ? opt.orElse(null) : null   // public since QuPath 0.6
        }
    } catch (Exception e) {
        LOG.debug('No server metadata for {}: {}', entry.getImageName(), e.getMessage())
    }
    if (md != null) {
        def cal = md.getPixelCalibration()
        boolean um = cal.hasPixelSizeMicrons()
        return [width: md.getWidth(), height: md.getHeight(),
                pw   : um ? cal.getPixelWidthMicrons() : null, ph: um ? cal.getPixelHeightMicrons() : null]
    }
    return metadataFromProjectFile(entry.getID(), projectFile)
}

Map metadataFromProjectFile(String id, File projectFile) {
    // QuPath 0.4/0.5 keep each image's metadata in project.qpproj (serverBuilder.metadata)
    Map none = [width: null, height: null, pw: null, ph: null]
    try {
        Map doc = fromJson(projectFile.getText('UTF-8'))
        def img = doc.images?.find { it.entryID != null && ((it.entryID as double) as long).toString() == id }
        def md = img?.serverBuilder?.metadata
        if (md == null) {
            return none
        }
        def pw = md.pixelCalibration?.pixelWidth
        def ph = md.pixelCalibration?.pixelHeight
        boolean um = pw?.unit in ['µm', 'um', 'microns'] && pw?.value != null
        return [width: md.width == null ? null : (md.width as double) as long,
                height: md.height == null ? null : (md.height as double) as long,
                pw: um ? pw.value as double : null, ph: um && ph?.value != null ? ph.value as double : null]
    } catch (Exception e) {
        LOG.debug('Could not read metadata of image {} from {}: {}', id, projectFile, e.getMessage())
        return none
    }
}

// ----------------------------------- process ------------------------------------------
Map runProcess(List<String> command, File workDir) {
    LOG.info('Running: {}', command.collect { it.contains(' ') ? "\"${it}\"" : it }.join(' '))
    def pb = new ProcessBuilder(command)
    pb.directory(workDir)
    String qupathDir = qupathInstallDir()
    if (qupathDir != null) {
        pb.environment().put('PAQUO_QUPATH_DIR', qupathDir)
        LOG.info('PAQUO_QUPATH_DIR={}', qupathDir)
    } else {
        LOG.warn('Could not find this QuPath\'s installation folder; paquo will search for a QuPath itself')
    }
    pb.environment().put('PYTHONUNBUFFERED', '1')
    pb.environment().put('PYTHONIOENCODING', 'utf-8')
    Process process
    try {
        process = pb.start()
    } catch (IOException e) {
        String why = "could not start ${command[0]}: ${e.getMessage()}"
        return [exitCode: -1, lastError: why, cancelled: false]
    }
    process.getOutputStream().close()
    List<String> lastErr = Collections.synchronizedList([])
    def out = pump(process.getInputStream(), false, lastErr)
    def err = pump(process.getErrorStream(), true, lastErr)
    try {
        while (!process.waitFor(200, java.util.concurrent.TimeUnit.MILLISECONDS)) {
            if (Thread.currentThread().isInterrupted()) {
                throw new InterruptedException()
            }
        }
        out.join(5000)
        err.join(5000)
    } catch (InterruptedException e) {
        stop(process)
        Thread.currentThread().interrupt()
        return [exitCode: -1, lastError: null, cancelled: true]
    }
    String last = null
    synchronized (lastErr) {
        last = lastErr.findAll { it.trim() }.with { it ? it.last() : null }
    }
    return [exitCode: process.exitValue(), lastError: last, cancelled: false]
}

Thread pump(InputStream stream, boolean isErr, List<String> lastErr) {
    def t = new Thread({
        try {
            stream.newReader('UTF-8').eachLine { String line ->
                if (isErr) {
                    lastErr << line
                    if (lastErr.size() > 50) {
                        lastErr.remove(0)
                    }
                    // qupath-refine writes progress to stderr too; only its problems are warnings
                    if (line.startsWith('error:') || line.startsWith('warning:')) {
                        LOG.warn('[qupath-refine] {}', line)
                    } else {
                        LOG.info('[qupath-refine] {}', line)
                    }
                } else {
                    LOG.info('[qupath-refine] {}', line)
                }
            }
        } catch (IOException ignored) {
            // stream closed: the process ended or was stopped
        }
    } as Runnable, isErr ? 'qupath-refine-stderr' : 'qupath-refine-stdout')
    t.setDaemon(true)
    t.start()
    return t
}

void stop(Process process) {
    LOG.warn('Stopping qupath-refine (pid {})', process.pid())
    process.descendants().forEach { it.destroy() }
    process.destroy()
    if (!process.waitFor(5, java.util.concurrent.TimeUnit.SECONDS)) {
        process.descendants().forEach { it.destroyForcibly() }
        process.destroyForcibly()
    }
}

String qupathInstallDir() {
    // Layouts paquo understands: Linux <dir>/lib/app/*.jar, Windows <dir>/app/*.jar,
    // macOS <dir>.app/Contents/app/*.jar
    try {
        def source = getProject().getClass().getProtectionDomain().getCodeSource()
        if (source == null) {
            return null
        }
        File appDir = new File(source.getLocation().toURI()).parentFile
        if (appDir?.name != 'app') {
            return null
        }
        File up = appDir.parentFile
        File dir = up.name in ['lib', 'Contents'] ? up.parentFile : up
        boolean hasRuntime = ['lib/runtime', 'runtime', 'Contents/runtime'].any { new File(dir, it).isDirectory() }
        return hasRuntime ? dir.absolutePath : null
    } catch (Exception e) {
        LOG.debug('QuPath installation folder unknown: {}', e.getMessage())
        return null
    }
}

// ----------------------------------- results ------------------------------------------
Map readResults(File resultsDir, Map exportManifest, long started) {
    File f = new File(resultsDir, 'manifest.json')
    if (!f.isFile() || f.lastModified() < started - 2000) {
        return null
    }
    Map doc = fromJson(f.getText('UTF-8'))
    if (doc?.format != 'qupath-refine-results' || !(doc.images instanceof List)) {
        throw new IllegalStateException("${f} is not a qupath-refine results manifest")
    }
    if (doc.export_created != null && doc.export_created != exportManifest.created) {
        return null
    }
    return doc
}

int importLive(def gui, def entry, def liveImageData, File resultsDir, Map result) {
    File geojson = new File(resultsDir, result.geojson as String)
    if (!geojson.isFile()) {
        LOG.warn('No result file {} for {}', geojson, entry.getImageName())
        return 0
    }
    // The refined class comes from Python (results manifest), never from this script's settings
    String refined = result.refined_class as String
    if (!refined) {
        LOG.warn('The results manifest names no refined class for {}: nothing imported', entry.getImageName())
        return 0
    }
    def objects = qupath.lib.io.PathIO.readObjects(geojson)
    // Still shown in a viewer: change it live. Closed or switched meanwhile: change the saved data.
    def viewers = []
    if (gui != null) {   // getViewers() in 0.4, getAllViewers() since 0.5
        viewers = gui.metaClass.respondsTo(gui, 'getAllViewers') ? gui.getAllViewers() : gui.getViewers()
    }
    boolean stillOpen = gui == null || viewers.any { it.getImageData().is(liveImageData) }
    def imageData = stillOpen ? liveImageData : entry.readImageData()
    def hierarchy = imageData.getHierarchy()
    def old = hierarchy.getDetectionObjects().findAll { o ->
        !o.isAnnotation() && !o.isLocked() && o.getPathClass() != null && o.getPathClass().toString() == refined
    }
    hierarchy.removeObjects(old, true)
    hierarchy.addObjects(objects)
    LOG.info('{}: replaced {} refined object(s) by {}', entry.getImageName(), old.size(), objects.size())
    if (gui == null || !stillOpen) {
        entry.saveImageData(imageData)   // headless or no longer open: nobody else will save it
    }
    return objects.size()
}

void refreshProject(def gui) {
    if (gui != null) {
        onFx { gui.refreshProject() }
    }
}

// ----------------------------------- helpers ------------------------------------------
def guiOrNull() {
    try {
        return getQuPath()
    } catch (Throwable ignored) {
        return null   // headless
    }
}

void fail(def gui, String message, Throwable e) {
    LOG.error("${TITLE}: ${message}".toString(), e)
    if (gui != null) {
        onFx { Dialogs.showErrorMessage(TITLE, message) }
    }
}

def onFx(Closure c) {
    if (javafx.application.Platform.isFxApplicationThread()) {
        return c.call()
    }
    def task = new java.util.concurrent.FutureTask(c as java.util.concurrent.Callable)
    javafx.application.Platform.runLater(task)
    return task.get()
}

int bindingInt(String name, int fallback) {
    if (!binding.hasVariable(name)) {
        return fallback
    }
    def v = binding.getVariable(name)
    return v instanceof Number ? (v as Number).intValue() : fallback
}

String qupathVersion() {
    try {
        return qupath.lib.common.GeneralTools.getVersion()
    } catch (Exception ignored) {
        return null
    }
}

List<String> splitArgs(String s) {
    if (!s?.trim()) {
        return []
    }
    def m = s =~ /"([^"]*)"|'([^']*)'|(\S+)/
    return m.collect { it[1] ?: it[2] ?: it[3] }
}

String toJson(Object o) {
    def gson = new com.google.gson.GsonBuilder().serializeNulls().setPrettyPrinting().disableHtmlEscaping().create()
    return gson.toJson(o)
}

Map fromJson(String text) {
    return new com.google.gson.Gson().fromJson(text, Map)
}

void writeAtomically(File target, String text) {
    File tmp = new File(target.parentFile, ".${target.name}.tmp")
    tmp.setText(text, 'UTF-8')
    try {
        java.nio.file.Files.move(tmp.toPath(), target.toPath(), java.nio.file.StandardCopyOption.ATOMIC_MOVE,
                java.nio.file.StandardCopyOption.REPLACE_EXISTING)
    } catch (java.nio.file.AtomicMoveNotSupportedException ignored) {
        java.nio.file.Files.move(tmp.toPath(), target.toPath(), java.nio.file.StandardCopyOption.REPLACE_EXISTING)
    }
}
