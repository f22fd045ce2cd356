/*
 * qupath-refine startup snippet: adds  Extensions > Refine coarse annotations...  to QuPath's menu.
 *
 * QuPath 0.5, 0.6, 0.7: Edit > Preferences > General > "Startup script path": choose this file.
 * QuPath 0.4: copy this file as startup.groovy into the QuPath user directory and tick
 *             "Run startup script" in Edit > Preferences.
 * The action, refine_coarse_annotations.groovy, is looked for next to this file (keep both files
 * together, e.g. in the qupath-refine checkout's groovy/ folder) unless ACTION_SCRIPT says where.
 *
 * The menu item runs the action on a background thread (QuPath stays usable); clicking it again
 * while it runs offers to stop it.
 */

// Absolute path of refine_coarse_annotations.groovy; empty: next to this file.
@groovy.transform.Field String ACTION_SCRIPT = ''

@groovy.transform.Field final String MENU_TEXT = 'Refine coarse annotations...'
@groovy.transform.Field final String TITLE = 'Refine coarse annotations'
@groovy.transform.Field final LOG = org.slf4j.LoggerFactory.getLogger('qupath-refine')

installMenuItem()

void installMenuItem() {
    def gui = getQuPath()
    if (gui == null) {
        return   // headless: no menu
    }
    File action = actionScript()
    if (action == null) {
        LOG.error('qupath-refine: refine_coarse_annotations.groovy not found; set ACTION_SCRIPT in {}',
                thisFile() ?: 'the startup script')
        return
    }
    String menuName = 'Extensions'
    try {
        menuName = qupath.lib.gui.localization.QuPathResources.getString('Menu.Extensions')   // 0.5+
    } catch (Throwable ignored) {
        // QuPath 0.4: menus are not localised
    }
    def menu = gui.getMenu(menuName, true)
    menu.getItems().removeIf { it.getText() == MENU_TEXT }   // the startup script may run twice
    def item = new javafx.scene.control.MenuItem(MENU_TEXT)
    def running = new java.util.concurrent.atomic.AtomicReference<Thread>()
    item.setOnAction { e -> launch(gui, action, running) }
    menu.getItems().add(item)
    LOG.info('qupath-refine: added {} > {} ({})', menuName, MENU_TEXT, action)
}

void launch(def gui, File action, java.util.concurrent.atomic.AtomicReference<Thread> running) {
    Thread current = running.get()
    if (current?.isAlive()) {
        if (Dialogs.showConfirmDialog(TITLE, 'qupath-refine is still running. Stop it?')) {
            current.interrupt()
        }
        return
    }
    if (!action.isFile()) {
        Dialogs.showErrorMessage(TITLE, "Script not found: ${action}")
        return
    }
    def thread = new Thread({
        try {
            gui.runScript(action, null)
        } catch (Throwable t) {
            LOG.error("qupath-refine: ${t.getMessage()}".toString(), t)
            javafx.application.Platform.runLater { Dialogs.showErrorMessage(TITLE, t.getMessage() ?: t.toString()) }
        } finally {
            running.compareAndSet(Thread.currentThread(), null)
        }
    } as Runnable, 'qupath-refine')
    thread.setDaemon(true)
    running.set(thread)
    thread.start()
}

File actionScript() {
    if (ACTION_SCRIPT) {
        File f = new File(ACTION_SCRIPT)
        return f.isFile() ? f : null
    }
    File here = thisFile()
    File f = here == null ? null : new File(here.parentFile, 'refine_coarse_annotations.groovy')
    return f?.isFile() ? f : null
}

File thisFile() {
    String key = 'qupath.script.file'   // set by QuPath for scripts run from a file
    return binding.hasVariable(key) && binding.getVariable(key) ? new File(binding.getVariable(key) as String) : null
}
