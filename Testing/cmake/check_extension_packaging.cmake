# Runs the extension's CMakeLists.txt files without a Slicer SDK and checks what they package.
#
#   cmake -DEXTENSION_SOURCE_DIR=<repo root> -DMANIFEST_FILE=<out.txt> -P check_extension_packaging.cmake
#
# The Slicer and CTK macros are replaced by recorders. Fails (FATAL_ERROR) when a named file does not
# exist, when a file that must ship is not packaged, when the library's development package
# (LiverTumorSegLib/develop/) is packaged, or when the install layout breaks the module.
# MANIFEST_FILE receives one line per packaged file: "<path in qt-scripted-modules>|<source path>",
# and lines "TEST|<script>" and "EXTENSION|<variable>|<value>".

if(NOT DEFINED EXTENSION_SOURCE_DIR OR NOT DEFINED MANIFEST_FILE)
  message(FATAL_ERROR "give -DEXTENSION_SOURCE_DIR=<repo root> -DMANIFEST_FILE=<file>")
endif()
get_filename_component(EXTENSION_SOURCE_DIR "${EXTENSION_SOURCE_DIR}" ABSOLUTE)

set(_recorder_errors "")
set(_recorder_packaged "")   # entries "<destination-relative path>|<absolute source>"
set(_recorder_tests "")
set(_recorder_events "")
set(_recorder_marker_dir "${CMAKE_CURRENT_BINARY_DIR}/_recorder")  # never written: markers only
set(CMAKE_BINARY_DIR "${_recorder_marker_dir}/build")
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-5.6/qt-scripted-modules")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-5.6/qt-scripted-modules")
set(Slicer_USE_PYTHONQT ON)
set(BUILD_TESTING ON)
set(_recorder_destination "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")

macro(_recorder_error text)
  list(APPEND _recorder_errors "${text}")
endmacro()

# --- CMake commands that do not exist (or differ) in script mode ---------------------------------
macro(project name)
  list(APPEND _recorder_events "project:${name}")
  set(PROJECT_NAME ${name})
  set(PROJECT_SOURCE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
  set(${name}_SOURCE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
endmacro()

macro(file)
  # CONFIGURE_DEPENDS only means "re-glob at build time"; script mode refuses it.
  set(_recorder_file_args "${ARGV}")
  list(REMOVE_ITEM _recorder_file_args CONFIGURE_DEPENDS)
  _file(${_recorder_file_args})
endmacro()

macro(find_package name)
  list(APPEND _recorder_events "find_package:${name}")
  if("${name}" STREQUAL "Slicer")
    set(Slicer_FOUND TRUE)
    set(Slicer_USE_FILE "${_recorder_marker_dir}/UseSlicer.cmake")
    set(Slicer_EXTENSION_GENERATE_CONFIG "${_recorder_marker_dir}/SlicerExtensionGenerateConfig.cmake")
    set(Slicer_EXTENSION_CPACK "${_recorder_marker_dir}/SlicerExtensionCPack.cmake")
  endif()
endmacro()

# SlicerExtensionCPack -> slicerFunctionGenerateExtensionDescription (Slicer 5.x) writes the catalog entry
# (.s4ext). It passes the EXTENSION_* variables unquoted to cmake_parse_arguments with one-value
# keywords, so a ";" in a value splits it and the catalog keeps only the part before the first ";".
function(_recorder_generate_extension_description)
  set(_one_value DESTINATION_DIR EXTENSION_BUILD_SUBDIRECTORY EXTENSION_CATEGORY EXTENSION_CONTRIBUTORS
    EXTENSION_DESCRIPTION EXTENSION_ENABLED EXTENSION_HOMEPAGE EXTENSION_ICONURL EXTENSION_NAME
    EXTENSION_SCREENSHOTURLS EXTENSION_STATUS EXTENSION_WC_REVISION EXTENSION_WC_ROOT EXTENSION_WC_TYPE
    EXTENSION_WC_URL SLICER_REVISION SLICER_WC_ROOT)
  cmake_parse_arguments(MY "" "${_one_value}" "EXTENSION_DEPENDS" ${ARGN})
  set(_errors "${_recorder_errors}")
  foreach(_variable EXTENSION_CATEGORY EXTENSION_CONTRIBUTORS EXTENSION_DESCRIPTION EXTENSION_HOMEPAGE
                    EXTENSION_ICONURL)
    if(NOT "${MY_${_variable}}" STREQUAL "${${_variable}}")
      list(APPEND _errors "${_variable} contains a semicolon: SlicerExtensionCPack passes it unquoted, so the extension catalog would show only '${MY_${_variable}}'")
    endif()
  endforeach()
  set(_recorder_errors "${_errors}" PARENT_SCOPE)
  set(_recorder_catalog_description "${MY_EXTENSION_DESCRIPTION}" PARENT_SCOPE)
endfunction()

macro(include path)
  if("${path}" STREQUAL "${Slicer_USE_FILE}")
    list(APPEND _recorder_events "include:UseSlicer")
  elseif("${path}" STREQUAL "${Slicer_EXTENSION_GENERATE_CONFIG}")
    list(APPEND _recorder_events "include:GenerateConfig")
  elseif("${path}" STREQUAL "${Slicer_EXTENSION_CPACK}")
    list(APPEND _recorder_events "include:CPack")
    _recorder_generate_extension_description(
      EXTENSION_NAME ${PROJECT_NAME}
      EXTENSION_CATEGORY ${EXTENSION_CATEGORY}
      EXTENSION_ICONURL ${EXTENSION_ICONURL}
      EXTENSION_STATUS ${EXTENSION_STATUS}
      EXTENSION_HOMEPAGE ${EXTENSION_HOMEPAGE}
      EXTENSION_CONTRIBUTORS ${EXTENSION_CONTRIBUTORS}
      EXTENSION_DESCRIPTION ${EXTENSION_DESCRIPTION}
      EXTENSION_SCREENSHOTURLS ${EXTENSION_SCREENSHOTURLS}
      EXTENSION_DEPENDS ${EXTENSION_DEPENDS}
      DESTINATION_DIR ${CMAKE_BINARY_DIR}
      )
  else()
    _include(${ARGV})
  endif()
endmacro()

macro(add_subdirectory dir)
  list(APPEND _recorder_events "add_subdirectory:${dir}")
  set(_recorder_parent_dir "${CMAKE_CURRENT_SOURCE_DIR}")
  set(CMAKE_CURRENT_SOURCE_DIR "${CMAKE_CURRENT_SOURCE_DIR}/${dir}")
  if(NOT EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/CMakeLists.txt")
    _recorder_error("add_subdirectory(${dir}): ${CMAKE_CURRENT_SOURCE_DIR}/CMakeLists.txt does not exist")
  else()
    _include("${CMAKE_CURRENT_SOURCE_DIR}/CMakeLists.txt")
  endif()
  set(CMAKE_CURRENT_SOURCE_DIR "${_recorder_parent_dir}")
endmacro()

# --- Slicer / CTK macros --------------------------------------------------------------------------
macro(_recorder_package source_dir relative_path kind)
  set(_recorder_source "${source_dir}/${relative_path}")
  if(IS_ABSOLUTE "${relative_path}")
    _recorder_error("${kind} ${relative_path}: absolute paths land outside the module folder")
  elseif(NOT EXISTS "${_recorder_source}")
    _recorder_error("${kind} names ${_recorder_source}, which does not exist")
  else()
    get_filename_component(_recorder_source "${_recorder_source}" REALPATH)
    list(APPEND _recorder_packaged "${relative_path}|${_recorder_source}")
  endif()
endmacro()

macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(_SM "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(_SM_UNPARSED_ARGUMENTS)
    _recorder_error("slicerMacroBuildScriptedModule: unknown arguments ${_SM_UNPARSED_ARGUMENTS}")
  endif()
  if(_SM_WITH_SUBDIR)
    _recorder_error("slicerMacroBuildScriptedModule: WITH_SUBDIR would move the module out of qt-scripted-modules/")
  endif()
  list(APPEND _recorder_events "scripted_module:${_SM_NAME}")
  foreach(_script IN LISTS _SM_SCRIPTS)
    get_filename_component(_ext "${_script}" EXT)
    if(NOT _ext MATCHES "py")
      set(_script "${_script}.py")
    endif()
    _recorder_package("${CMAKE_CURRENT_SOURCE_DIR}" "${_script}" "slicerMacroBuildScriptedModule(SCRIPTS)")
  endforeach()
  foreach(_resource IN LISTS _SM_RESOURCES)
    _recorder_package("${CMAKE_CURRENT_SOURCE_DIR}" "${_resource}" "slicerMacroBuildScriptedModule(RESOURCES)")
  endforeach()
endmacro()

macro(ctkMacroCompilePythonScript)
  cmake_parse_arguments(_CTK "NO_INSTALL_SUBDIR;GLOBAL_TARGET"
    "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR" "SCRIPTS;RESOURCES" ${ARGN})
  if(NOT _CTK_SOURCE_DIR)
    set(_CTK_SOURCE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
  endif()
  get_filename_component(_CTK_SOURCE_DIR "${_CTK_SOURCE_DIR}" ABSOLUTE)
  if(NOT "${_CTK_DESTINATION_DIR}" STREQUAL "${_recorder_destination}")
    _recorder_error("ctkMacroCompilePythonScript(${_CTK_TARGET_NAME}): DESTINATION_DIR ${_CTK_DESTINATION_DIR} is not the module folder ${_recorder_destination}")
  endif()
  if(NOT "${_CTK_INSTALL_DIR}" STREQUAL "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}" OR NOT _CTK_NO_INSTALL_SUBDIR)
    _recorder_error("ctkMacroCompilePythonScript(${_CTK_TARGET_NAME}): must install into ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR} with NO_INSTALL_SUBDIR")
  endif()
  list(APPEND _recorder_events "ctk_python:${_CTK_TARGET_NAME}")
  foreach(_file IN LISTS _CTK_SCRIPTS _CTK_RESOURCES)
    _recorder_package("${_CTK_SOURCE_DIR}" "${_file}" "ctkMacroCompilePythonScript(${_CTK_TARGET_NAME})")
  endforeach()
endmacro()

macro(slicer_add_python_unittest)
  cmake_parse_arguments(_UT "" "SCRIPT;TESTNAME_PREFIX" "SLICER_ARGS" ${ARGN})
  if(NOT EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/${_UT_SCRIPT}")
    _recorder_error("slicer_add_python_unittest names ${_UT_SCRIPT}, which does not exist")
  endif()
  list(APPEND _recorder_tests "${_UT_SCRIPT}")
endmacro()

# --- Run the extension's CMake files --------------------------------------------------------------
set(CMAKE_CURRENT_SOURCE_DIR "${EXTENSION_SOURCE_DIR}")
_include("${EXTENSION_SOURCE_DIR}/CMakeLists.txt")

# --- Checks ---------------------------------------------------------------------------------------
set(_recorder_expected_events "project:LiverTumorSeg;find_package:Slicer;include:UseSlicer;add_subdirectory:LiverTumorSeg;scripted_module:LiverTumorSeg;include:GenerateConfig;include:CPack")
foreach(_event IN LISTS _recorder_expected_events)
  list(FIND _recorder_events "${_event}" _index)
  if(_index EQUAL -1)
    _recorder_error("the CMake files never did ${_event}")
  endif()
endforeach()
list(FIND _recorder_events "include:UseSlicer" _use_index)
list(FIND _recorder_events "add_subdirectory:LiverTumorSeg" _sub_index)
if(_use_index GREATER _sub_index)
  _recorder_error("include(\${Slicer_USE_FILE}) must come before add_subdirectory(LiverTumorSeg)")
endif()

foreach(_variable EXTENSION_HOMEPAGE EXTENSION_CATEGORY EXTENSION_CONTRIBUTORS EXTENSION_DESCRIPTION
                  EXTENSION_ICONURL EXTENSION_DEPENDS)
  if("${${_variable}}" STREQUAL "")
    _recorder_error("${_variable} is not set in the top-level CMakeLists.txt")
  endif()
endforeach()
if(NOT DEFINED EXTENSION_SCREENSHOTURLS)
  _recorder_error("EXTENSION_SCREENSHOTURLS is not defined")
endif()
if(NOT "${EXTENSION_CATEGORY}" STREQUAL "Segmentation")
  _recorder_error("EXTENSION_CATEGORY is '${EXTENSION_CATEGORY}', expected Segmentation")
endif()

# Everything that must ship, as "<destination-relative path>|<source>" entries: the library
# without its development package (LiverTumorSegLib/develop/), which must not ship.
set(_recorder_required "")
_file(GLOB_RECURSE _library RELATIVE "${EXTENSION_SOURCE_DIR}" "${EXTENSION_SOURCE_DIR}/LiverTumorSegLib/*.py")
list(FILTER _library EXCLUDE REGEX "^LiverTumorSegLib/develop/")
_file(GLOB_RECURSE _module RELATIVE "${EXTENSION_SOURCE_DIR}/LiverTumorSeg" "${EXTENSION_SOURCE_DIR}/LiverTumorSeg/*.py")
_file(GLOB_RECURSE _resources RELATIVE "${EXTENSION_SOURCE_DIR}"
  "${EXTENSION_SOURCE_DIR}/Resources/UI/*.ui"
  "${EXTENSION_SOURCE_DIR}/Resources/Icons/*"
  "${EXTENSION_SOURCE_DIR}/Resources/Models/*.json"
  "${EXTENSION_SOURCE_DIR}/Resources/Models/*.safetensors")
foreach(_path IN LISTS _library _resources)
  list(APPEND _recorder_required "${_path}|${EXTENSION_SOURCE_DIR}/${_path}")
endforeach()
foreach(_path IN LISTS _module)
  list(APPEND _recorder_required "${_path}|${EXTENSION_SOURCE_DIR}/LiverTumorSeg/${_path}")
endforeach()

set(_recorder_destinations "")
foreach(_entry IN LISTS _recorder_packaged)
  string(REPLACE "|" ";" _pair "${_entry}")
  list(GET _pair 0 _destination)
  list(FIND _recorder_destinations "${_destination}" _index)
  if(NOT _index EQUAL -1)
    _recorder_error("${_destination} is packaged twice")
  endif()
  list(APPEND _recorder_destinations "${_destination}")
endforeach()

foreach(_entry IN LISTS _recorder_required)
  if(_entry MATCHES "/__pycache__/")
    continue()
  endif()
  string(REPLACE "|" ";" _pair "${_entry}")
  list(GET _pair 0 _destination)
  list(GET _pair 1 _source)
  get_filename_component(_source "${_source}" REALPATH)
  list(FIND _recorder_packaged "${_destination}|${_source}" _index)
  if(_index EQUAL -1)
    _recorder_error("${_source} is not packaged (expected as ${_destination} in qt-scripted-modules/)")
  endif()
endforeach()

foreach(_destination IN LISTS _recorder_destinations)
  if(_destination MATCHES "^LiverTumorSegLib/develop/")
    _recorder_error("${_destination} is packaged: the library's development package (LiverTumorSegLib/develop/) stays out of the extension")
  endif()
endforeach()

# Slicer loads every .py at the top of qt-scripted-modules/ as a module: only the module may be there.
foreach(_destination IN LISTS _recorder_destinations)
  if(_destination MATCHES "\\.py$" AND NOT _destination MATCHES "/")
    if(NOT "${_destination}" STREQUAL "LiverTumorSeg.py")
      _recorder_error("${_destination} would be loaded by Slicer as a module; move it into a package folder")
    endif()
  endif()
endforeach()
list(FIND _recorder_tests "LiverTumorSeg.py" _index)
if(_index EQUAL -1)
  _recorder_error("the module's self-test (slicer_add_python_unittest(SCRIPT LiverTumorSeg.py)) is not registered")
endif()

# --- Report ---------------------------------------------------------------------------------------
set(_manifest "")
foreach(_entry IN LISTS _recorder_packaged)
  string(APPEND _manifest "${_entry}\n")
endforeach()
foreach(_test IN LISTS _recorder_tests)
  string(APPEND _manifest "TEST|${_test}\n")
endforeach()
foreach(_variable EXTENSION_HOMEPAGE EXTENSION_CATEGORY EXTENSION_DEPENDS EXTENSION_ICONURL)
  string(APPEND _manifest "EXTENSION|${_variable}|${${_variable}}\n")
endforeach()
string(APPEND _manifest "CATALOG|EXTENSION_DESCRIPTION|${_recorder_catalog_description}\n")
_file(WRITE "${MANIFEST_FILE}" "${_manifest}")

if(_recorder_errors)
  string(REPLACE ";" "\n  " _text "${_recorder_errors}")
  message(FATAL_ERROR "extension packaging check failed:\n  ${_text}")
endif()
list(LENGTH _recorder_packaged _count)
message(STATUS "extension packaging check passed: ${_count} files packaged")
