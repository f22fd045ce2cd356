/*
 * Compile-check QuPath Groovy scripts with plain Groovy 4 (no QuPath on the classpath).
 *
 * Usage: java -cp groovy-4.x.jar:slf4j-api.jar groovy.ui.GroovyMain compile_check.groovy FILE...
 *
 * Each file is compiled in memory through class generation, as QuPath would compile it, with
 * QuPath's default imports added (QPEx's static methods, Dialogs, QuPathGUI, GeneralTools, ...).
 * Classes of QuPath, JavaFX and QuPath's libraries are not available here: any such class name
 * (a dotted name under those packages ending in a capitalised class name) resolves to an empty
 * placeholder class, so calls on them stay dynamic. Everything else is real: a syntax error, an
 * unknown class elsewhere (e.g. a misspelt java.* class), a wrong import, a duplicate variable
 * or method fails the check. Exit code 1 on any failure.
 */
import org.codehaus.groovy.ast.ClassHelper
import org.codehaus.groovy.ast.ClassNode
import org.codehaus.groovy.control.ClassNodeResolver
import org.codehaus.groovy.control.CompilationFailedException
import org.codehaus.groovy.control.CompilationUnit
import org.codehaus.groovy.control.CompilerConfiguration
import org.codehaus.groovy.control.Phases
import org.codehaus.groovy.control.customizers.ImportCustomizer

import java.lang.reflect.Modifier

final String PACKAGES = /(qupath|javafx|org\.slf4j|com\.google\.gson|org\.locationtech\.jts|ij)/
final PLACEHOLDER = ~/^${PACKAGES}(\.[a-z][a-z0-9_]*)*\.[A-Z][A-Za-z0-9_]*$/

// QuPath's default imports (QPEx.getCoreClasses() and `import static QPEx.*`), the ones scripts use
final DEFAULT_IMPORTS = [
    'qupath.fx.dialogs.Dialogs', 'qupath.lib.gui.QuPathGUI', 'qupath.lib.gui.tools.GuiTools',
    'qupath.lib.common.GeneralTools', 'qupath.lib.io.PathIO', 'qupath.lib.objects.PathObjects',
    'qupath.lib.roi.ROIs', 'qupath.lib.objects.classes.PathClass', 'qupath.lib.regions.RegionRequest',
    'qupath.lib.images.servers.ImageServer', 'qupath.lib.projects.ProjectImageEntry',
]

class PlaceholderResolver extends ClassNodeResolver {

    java.util.regex.Pattern pattern
    Map<String, ClassNode> made = [:]

    @Override
    ClassNodeResolver.LookupResult findClassNode(String name, CompilationUnit cu) {
        def real = super.findClassNode(name, cu)
        if (real != null || !(name ==~ pattern)) {
            return real
        }
        ClassNode node = made.computeIfAbsent(name) { n ->
            new ClassNode(n, Modifier.PUBLIC, ClassHelper.OBJECT_TYPE)
        }
        return new ClassNodeResolver.LookupResult(null, node)
    }

}

int failures = 0
if (!args) {
    System.err.println('usage: compile_check.groovy FILE...')
    System.exit(2)
}
for (String path in args) {
    File file = new File(path)
    def config = new CompilerConfiguration()
    def imports = new ImportCustomizer()
    imports.addImports(DEFAULT_IMPORTS as String[])
    imports.addStaticStars('qupath.lib.gui.scripting.QPEx')
    config.addCompilationCustomizers(imports)
    def cu = new CompilationUnit(config)
    cu.setClassNodeResolver(new PlaceholderResolver(pattern: PLACEHOLDER))
    cu.addSource(file)
    try {
        cu.compile(Phases.CLASS_GENERATION)
        println "compile OK   ${path}"
    } catch (CompilationFailedException e) {
        failures++
        System.err.println "compile FAIL ${path}\n${e.message}"
    }
}
System.exit(failures ? 1 : 0)
